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
