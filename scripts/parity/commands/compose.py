"""`parity compose`: the Docker stack's everyday verbs (make up, up-offline, down, logs).

    parity compose up              # build, start, return once every service is healthy
    parity compose up --offline    # no registry: build the stand-in images first, then up
    parity compose ps | logs [SERVICE...] | down

Each is one `docker compose` command, printed before it runs, so what you learn here
works without parity too. The stack is the one Compose's own variables name
(COMPOSE_FILE, COMPOSE_PROJECT_NAME), as for any `docker compose` typed in the
repository; `--offline` sets COMPOSE_FILE to compose.yaml plus compose.offline.yaml.
COMPOSE names another Compose v2 CLI (e.g. COMPOSE=docker-compose).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from parity.harness.images import BuildError, KitUnavailable, ensure_images
from parity.harness.repo import run_shown
from parity.harness.stack import OFFLINE_COMPOSE_FILES

# What each verb runs after `docker compose`; `up` then shows the services' state.
VERBS: dict[str, list[str]] = {
    "up": ["up", "--detach", "--build", "--wait"],
    "down": ["down", "--remove-orphans"],
    "logs": ["logs", "--follow", "--tail=100"],
    "ps": ["ps"],
}
HELP = {
    "up": "build and start the stack; return when every service is healthy",
    "down": "stop and remove the containers (data volumes are kept)",
    "logs": "follow the logs of every service, or of those named",
    "ps": "the services and their state",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parity compose", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, text in HELP.items():
        command = verbs.add_parser(verb, help=text, description=text)
        command.add_argument(
            "--offline",
            action="store_true",
            help=f"compose.yaml plus compose.offline.yaml (COMPOSE_FILE={OFFLINE_COMPOSE_FILES})"
            + ("; builds the missing stand-in images first" if verb == "up" else ""),
        )
        if verb == "logs":
            command.add_argument("services", nargs="*", help="only these services")
    return parser.parse_args(argv)


def compose_command() -> list[str]:
    """The Compose CLI: COMPOSE when set (as the Makefile's variable), else the plugin."""
    return shlex.split(os.environ.get("COMPOSE") or "docker compose")


def run(arguments: list[str], offline: bool) -> int:
    env = {"COMPOSE_FILE": OFFLINE_COMPOSE_FILES} if offline else {}
    prefix = "".join(f"{name}={value} " for name, value in env.items())
    command = [*compose_command(), *arguments]
    try:
        return run_shown(command, env=env, shown=prefix + shlex.join(command))
    except FileNotFoundError:
        print(f"error: {command[0]!r} not found: `make tools` installs the Compose CLI, "
              "or set COMPOSE to yours", file=sys.stderr)  # fmt: skip
        return 127


def build_offline_images() -> int:
    """The stand-in images compose.offline.yaml runs: built when missing or stale."""
    try:
        ensure_images()
    except KitUnavailable as exc:
        print(f"error: cannot build the offline images here: {exc}", file=sys.stderr)
        return 3
    except BuildError as exc:
        print(f"error: building the offline images failed: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verb == "up" and args.offline:
        status = build_offline_images()
        if status:
            return status
    arguments = VERBS[args.verb] + list(getattr(args, "services", []))
    status = run(arguments, args.offline)
    if args.verb == "up" and status == 0:
        status = run(VERBS["ps"], args.offline)
    return status
