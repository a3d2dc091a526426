"""`parity loadtest`: a headless Locust run of one scenario and load shape, its CSV and
HTML report in a directory of its own (make loadtest).

    parity loadtest                                   # 2 min of the mixed scenario
    parity loadtest --scenario browse --shape step    # ramp users to find the knee
    parity loadtest --host http://127.0.0.1:8080 -u 100 -t 5m   # other options: Locust's

The scenarios, shapes and Locust's defaults are loadtest/locustfile.py's and
loadtest/locust.conf's (docs/loadtest.md); any option not listed here goes to Locust
unchanged, and a bad value is named by Locust or the locustfile.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from parity.harness.repo import REPO_ROOT, run_shown

CONFIG = "loadtest/locust.conf"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="parity loadtest",
        description=__doc__.split("\n\n")[0],
        epilog="Any other option goes to Locust (locust --help).",
    )
    parser.add_argument("--host", default="http://127.0.0.1:8000",
                        help="the API to load (default: `make run`'s, %(default)s)")  # fmt: skip
    parser.add_argument("--scenario", default="mixed",
                        help="browse | buy | burst | mixed (default %(default)s)")  # fmt: skip
    parser.add_argument("--shape", default="constant",
                        help="constant | step | spike (default %(default)s)")  # fmt: skip
    parser.add_argument("--out", type=Path,
                        help="report directory (default results/loadtest-DATE-TIME)")  # fmt: skip
    return parser.parse_known_args(argv)


def locust_command(args: argparse.Namespace, out: Path, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "locust", "--config", CONFIG, "--headless",
        "--host", args.host, "--tags", args.scenario, "--shape", args.shape,
        "--csv", str(out / "locust"), "--html", str(out / "report.html"), *extra,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    out = args.out or REPO_ROOT / "results" / time.strftime("loadtest-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    command = locust_command(args, out, extra)
    status = run_shown(command, shown=shlex.join(["locust", *command[3:]]))
    if (out / "report.html").exists():
        print(f"report: {out}/report.html, statistics: {out}/locust_*.csv", file=sys.stderr)
    return status
