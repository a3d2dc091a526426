"""parity's tooling: the `parity` command (parity/cli.py), the commands it runs
(parity/commands/, one module each, never importing one another) and the harness they
stand on (parity/harness/: the stack, targets, load, reports). docs/architecture.md
has the picture."""
