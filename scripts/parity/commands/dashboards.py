"""Generate the Grafana dashboards in observability/grafana/dashboards/ from code
(parity/dashboards/), or check that the committed JSON is what the code generates.

    parity dashboards            # write the JSON files (make dashboards)
    parity dashboards --check    # exit 1 if a file is stale or missing
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from parity.dashboards import DASHBOARD_DIR, render_all


def stale_files(directory: Path, rendered: dict[str, str]) -> dict[str, str]:
    """File name -> unified diff (committed vs generated) for every file that differs."""
    stale = {}
    for name, text in rendered.items():
        path = directory / name
        current = path.read_text() if path.exists() else ""
        if current != text:
            diff = difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"{name} (committed)",
                tofile=f"{name} (generated)",
            )
            stale[name] = "".join(diff)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="parity dashboards", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if a file is stale"
    )
    parser.add_argument(
        "--out", type=Path, default=DASHBOARD_DIR, help=f"directory (default {DASHBOARD_DIR})"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)

    rendered = render_all()
    stale = stale_files(args.out, rendered)
    if not args.check:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in stale:
            (args.out / name).write_text(rendered[name])
    if args.json:
        print(json.dumps({"files": sorted(rendered), "stale": sorted(stale), "check": args.check}))
    else:
        for name in sorted(rendered):
            state = ("STALE" if args.check else "written") if name in stale else "up to date"
            print(f"{args.out / name}: {state}")
        if args.check and stale:
            print("\n".join(stale.values()), file=sys.stderr)
            print("run `make dashboards` and commit the result", file=sys.stderr)
    return 1 if args.check and stale else 0
