"""`parity images`: build the local stand-ins compose.offline.yaml runs (no registry).

    parity images [--rebuild] [--only NAME[,NAME]] [--json]

What they are made of and how the cache works: parity/harness/images.py.

Progress goes to stderr, a table (or --json) to stdout. Exit status: 0 every image is
there; 1 a build failed (the message names the image and shows the end of its output;
full logs under ~/.cache/parity/offline-images/logs/); 3 nothing was run: no Docker
engine reachable, or the base must be built and debootstrap is missing or we are not
root, or the host's apt configuration names no bookworm mirror.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict

from parity.harness.images import (
    EXIT_CANNOT_RUN,
    EXIT_FAILED,
    EXIT_OK,
    SPECS,
    BuildError,
    KitUnavailable,
    Result,
    ensure_images,
)


def _table(results: Sequence[Result]) -> str:
    width = max([len("image"), *(len(r.image) for r in results)])
    lines = [f"{'image':<{width}}  {'state':<6}  {'seconds':>7}  {'size MB':>7}"]
    lines += [
        f"{r.image:<{width}}  {r.state:<6}  {r.seconds:>7.1f}  {r.size_mb:>7.1f}" for r in results
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity images",
        description="Build local stand-ins for the images compose.yaml pulls (offline).",
    )
    parser.add_argument("--rebuild", action="store_true", help="ignore the caches")
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help="only these images: " + ", ".join(spec.key for spec in SPECS),
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = {n.strip() for n in args.only.split(",") if n.strip()} if args.only else None
    started = time.monotonic()
    outcome, reason, results, code = "ok", "", [], EXIT_OK
    try:
        results = ensure_images(rebuild=args.rebuild, only=only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KitUnavailable as exc:
        outcome, reason, code = "not-run", str(exc), EXIT_CANNOT_RUN
        print(f"NOT RUN: {reason}", file=sys.stderr if args.json else sys.stdout)
    except BuildError as exc:
        outcome, reason, results, code = "failed", str(exc), exc.results, EXIT_FAILED
        print(f"FAILED: {exc}", file=sys.stderr)
    seconds = round(time.monotonic() - started, 1)
    if args.json:
        report = {
            "outcome": outcome,
            "reason": reason or None,
            "seconds": seconds,
            "images": [asdict(r) for r in results],
        }
        print(json.dumps(report, indent=2))
    elif results:
        print(_table(results))
        print(f"total {seconds:.1f} s")
    return code
