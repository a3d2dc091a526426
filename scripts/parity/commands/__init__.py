"""One module per `parity` command. A command stands on parity.harness and never imports
another command; parity/cli.py lists them."""
