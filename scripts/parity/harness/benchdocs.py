"""Keep a benchmark's measured figures in docs/benchmarks.md up to date without touching
the rest of the file: each benchmark owns the block between its markers
(`<!-- NAME:start -->` … `<!-- NAME:end -->`); the prose around it is written by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parity.harness.repo import REPO_ROOT

DOCS = REPO_ROOT / "docs" / "benchmarks.md"


def replace_section(name: str, heading: str, body: str, path: Path = DOCS) -> None:
    """Replace the block of `name`; if the file has none, append `## heading` and it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{block}\n"
    path.write_text(text)


def cpu_model() -> str:
    """The CPU's model name, for the machine line under measured figures."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine_sentence(machine: dict[str, Any], *, python: str | None, postgres: bool) -> str:
    """`Machine: …` under a benchmark's figures (no final stop): CPUs, OS, the Python the
    servers ran (None: several, named in the table), the services on loopback, and the
    load average at the end."""
    m = machine
    parts = [f"{m['cpus']} × {m['cpu_model']}", m["os"]]
    if python is not None:
        parts.append(f"Python {python}")
    services = f"Redis {m['redis']} and Postgres" if postgres else f"Redis {m['redis']}"
    parts.append(
        f"{services} on loopback, load average at the end {m['load_average']} "
        "(shared with other work)"
    )
    return "Machine: " + ", ".join(parts)
