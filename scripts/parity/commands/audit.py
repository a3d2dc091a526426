"""Audit the pinned requirements for known vulnerabilities with pip-audit, and say
plainly when the audit could not be done.

    parity audit                      # requirements.txt + requirements-dev.txt
    parity audit --json               # machine-readable summary
    parity audit --allow-unaudited    # exit 0 when the database is unreachable

pip-audit alone prints "No known vulnerabilities found" and exits 0 when its
vulnerability service answers nothing for any package (a mirror without PyPI's
per-release JSON, no route to osv.dev): every package is merely "skipped". That is a
silent failure, so this script counts what was really audited.

Exit status: 0 every package audited, none vulnerable; 1 a known vulnerability;
3 some packages could not be audited (the database was unreachable) — 0 instead with
`--allow-unaudited`, but the banner still says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from parity.harness.repo import REPO_ROOT

DEFAULT_FILES = ("requirements.txt", "requirements-dev.txt")
EXIT_VULNERABLE = 1
EXIT_UNAUDITED = 3


@dataclass
class AuditResult:
    audited: int = 0
    vulnerable: dict[str, list[str]] = field(default_factory=dict)
    unaudited: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.error is None and not self.unaudited


def summarise(report: dict[str, Any]) -> AuditResult:
    """Classify pip-audit's JSON report (`-f json`): audited, vulnerable, skipped."""
    result = AuditResult()
    for dependency in report.get("dependencies", []):
        name = f"{dependency['name']}=={dependency.get('version', '?')}"
        if "skip_reason" in dependency:
            result.unaudited[name] = dependency["skip_reason"]
            continue
        result.audited += 1
        if vulns := dependency.get("vulns"):
            result.vulnerable[name] = [v["id"] for v in vulns]
    return result


def run_pip_audit(files: list[Path], service: str) -> AuditResult:
    command = [sys.executable, "-m", "pip_audit", "-f", "json", "--progress-spinner", "off"]
    command += ["--vulnerability-service", service, "--disable-pip", "--no-deps"]
    for path in files:
        command += ["-r", str(path)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(completed.stdout)
    except ValueError:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        return AuditResult(error=f"pip-audit failed (exit {completed.returncode}): {last_line}")
    return summarise(report)


def print_summary(result: AuditResult, service: str) -> None:
    if result.error:
        print(f"AUDIT NOT PERFORMED: {result.error}")
        return
    total = result.audited + len(result.unaudited)
    print(f"pip-audit ({service}): {result.audited}/{total} pinned packages audited")
    for name, ids in sorted(result.vulnerable.items()):
        print(f"  VULNERABLE {name}: {', '.join(ids)}")
    if result.unaudited:
        reasons = sorted(set(result.unaudited.values()))
        print(
            f"AUDIT INCOMPLETE: {len(result.unaudited)} of {total} packages were NOT checked "
            "against any vulnerability database (it could not be reached or knows nothing "
            f"of these releases). First reason: {reasons[0]}"
        )
    elif not result.vulnerable:
        print("no known vulnerabilities")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parity audit", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        help=f"requirement files (default: {' '.join(DEFAULT_FILES)})",
    )
    parser.add_argument("--service", choices=["pypi", "osv"], default="pypi")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")
    parser.add_argument(
        "--allow-unaudited",
        action="store_true",
        help="exit 0 when packages could not be audited (the banner still says so)",
    )
    args = parser.parse_args(argv)
    files = args.files or [REPO_ROOT / name for name in DEFAULT_FILES]
    for path in files:
        if not path.is_file():
            parser.error(f"no such requirements file: {path}")
    print(f"auditing {', '.join(str(p) for p in files)} ...", file=sys.stderr)
    result = run_pip_audit(files, args.service)
    if args.json:
        print(json.dumps({**asdict(result), "complete": result.complete}, indent=2))
    else:
        print_summary(result, args.service)
    if result.vulnerable:
        return EXIT_VULNERABLE
    if not result.complete and not args.allow_unaudited:
        return EXIT_UNAUDITED
    return 0
