"""Where the API under test runs, chosen by one option group that every command shares.

    --native        start it here: Gunicorn with gunicorn.conf.py against the local
                    Postgres and Redis (a database and Redis prefix of the run's own)
    --compose       the running `docker compose up` stack
    --url URL       alone: an API already running at URL (loopback only: load goes
                    nowhere else); with --compose or --pid: where that API answers
    --pid PID       a Gunicorn master someone else started, signalled by pid

A command names the kinds it supports and its default; `target_choice` turns the
parsed options into one `TargetChoice`, refusing a combination that means nothing with
a message naming it (exit 2, as argparse does), never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

from parity.harness.stack import compose_api_url

Kind = Literal["native", "compose", "url", "pid"]
ALL_FLAGS: tuple[Kind, ...] = ("native", "compose", "pid")
LOOPBACK_PREFIXES = ("http://127.", "http://localhost", "http://[::1]")

DEFAULT_HELP: Mapping[Kind, str] = {
    "native": "start Gunicorn here (parity stack)",
    "compose": "the running `docker compose up` stack",
    "url": "an API already running at URL, e.g. http://127.0.0.1:8000 (loopback only)",
    "pid": "signal this running Gunicorn master",
}


@dataclass(frozen=True)
class TargetChoice:
    kind: Kind
    url: str | None = None  # the API's base URL, when it is not started here
    pid: int | None = None

    @property
    def native(self) -> bool:
        return self.kind == "native"


def add_target_options(
    parser: argparse.ArgumentParser,
    kinds: Collection[Kind],
    *,
    default: Kind | None = "native",
    help: Mapping[Kind, str] | None = None,
) -> argparse._MutuallyExclusiveGroup:
    """--native/--compose/--pid (one of them; `default` when none, required when None)
    and --url, for the `kinds` the command supports. `help` overrides a kind's line.
    Returns the exclusive group, for a command with a mode of its own beside them."""
    lines = {**DEFAULT_HELP, **(help or {})}
    group = parser.add_argument_group("where the API runs")
    exclusive = group.add_mutually_exclusive_group(required=default is None and "url" not in kinds)
    for kind in ("native", "compose"):
        if kind in kinds:
            suffix = " (the default)" if kind == default else ""
            exclusive.add_argument(f"--{kind}", action="store_true", help=lines[kind] + suffix)
    if "pid" in kinds:
        exclusive.add_argument("--pid", type=int, help=lines["pid"])
    if url_help := _url_help(kinds, lines):
        group.add_argument("--url", help=url_help)
    parser.set_defaults(target_kinds=tuple(kinds), target_default=default)
    return exclusive


def _url_help(kinds: Collection[Kind], lines: Mapping[Kind, str]) -> str:
    modified = [f"--{kind}" for kind in ("compose", "pid") if kind in kinds]
    parts = [lines["url"]] if "url" in kinds else []
    if modified:
        where = "/".join(modified)
        parts.append(f"with {where}: where it answers (default {compose_api_url()})")
    return "; ".join(parts)


def target_choice(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TargetChoice:
    """The target the parsed options name, or parser.error naming what is wrong."""
    kinds: tuple[Kind, ...] = args.target_kinds
    url: str | None = getattr(args, "url", None)
    named: list[Kind] = [k for k in ALL_FLAGS if getattr(args, k, None) not in (None, False)]
    kind: Kind | None
    if named:
        kind = named[0]  # argparse's group lets at most one through
    elif url is not None and "url" in kinds:
        kind = "url"
    else:
        kind = args.target_default
    if kind is None:
        parser.error("say where the API runs: " + ", ".join(f"--{k}" for k in kinds))
    if url is not None and kind == "native":
        parser.error("argument --url: not with --native (the API is started here)")
    if kind == "url" and url is not None and not url.startswith(LOOPBACK_PREFIXES):
        parser.error(f"argument --url: {url!r} is not on this machine (loopback only)")
    if kind in ("compose", "pid"):
        url = url or compose_api_url()
    return TargetChoice(kind, url.rstrip("/") if url else None, getattr(args, "pid", None))
