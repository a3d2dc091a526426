"""argparse value types shared by the scripts: a bad value is refused with a message
naming it (`--rounds: '0' must be at least 1`), never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    """A number of type `kind` within [low, high]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} must be between {low:g} and {high:g}")
        return value

    return parse


def add_measurement_options(
    parser: argparse.ArgumentParser,
    *,
    rounds: int | None = None,
    duration: int | None = None,
    duration_means: str = "seconds per measurement",
    workers: int | None = None,
    connections: int | None = None,
) -> None:
    """The options every benchmark shares, each added when given its default: --rounds,
    --duration (what a second of it measures: `duration_means`), --workers (Gunicorn
    workers per server) and --connections (wrk's); a value below 1 is refused by name."""
    if rounds is not None:
        parser.add_argument("--rounds", type=positive_int, default=rounds,
                            help=f"rounds (default {rounds})")  # fmt: skip
    if duration is not None:
        parser.add_argument("--duration", type=positive_int, default=duration,
                            help=f"{duration_means} (default {duration})")  # fmt: skip
    if workers is not None:
        parser.add_argument("--workers", type=positive_int, default=workers,
                            help=f"Gunicorn workers per server (default {workers})")  # fmt: skip
    if connections is not None:
        parser.add_argument("--connections", type=positive_int, default=connections,
                            help=f"wrk connections (default {connections})")  # fmt: skip
