"""The rate-limit policy grammar of RATE_LIMIT_DEFAULT and RATE_LIMIT_ROUTES
(docs/rate-limiting.md): `100/60s`, and `writes=20/60s POST,PATCH /api/ fail=closed;...`.

A leaf: app/settings.py validates the variables with it, and the limiter reads the
policies it makes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_QUOTA = 1_000_000  # the limiter keeps one timestamp per allowed request in the window
MAX_WINDOW_SECONDS = 86_400
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_WINDOW_UNITS = {"s": 1, "m": 60, "h": 3600}
_QUOTA = re.compile(r"^(\d+)/(\d+)([smh]?)$")
_POLICY_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """At most `quota` requests in any `window_seconds`, for requests whose method is in
    `methods` (None: any) and whose path is `path_prefix` or below it (None: any).

    `fail_open`: what happens when Redis cannot decide. True: each worker decides alone,
    admitting `quota // workers` per window (at least 1); False: 503. None: not said
    (`fail=` absent), Settings.rate_limit_policies fills in RATE_LIMIT_FAIL_OPEN."""

    name: str
    quota: int
    window_seconds: int
    methods: frozenset[str] | None = None
    path_prefix: str | None = None
    fail_open: bool | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.path_prefix is None or path == self.path_prefix:
            return True
        return path.startswith(self.path_prefix.rstrip("/") + "/")


def _split(value: str, separator: str) -> list[str]:
    return [part.strip() for part in value.split(separator) if part.strip()]


def parse_quota(text: str) -> tuple[int, int]:
    """`100/60s` -> (100, 60). The unit is s, m or h; none means seconds."""
    match = _QUOTA.match(text.strip())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not QUOTA/WINDOW (e.g. 100/60s, 1000/1h)")
    quota, window = int(match[1]), int(match[2]) * _WINDOW_UNITS[match[3] or "s"]
    if not 1 <= quota <= MAX_QUOTA:
        raise ValueError(f"quota {quota} is not between 1 and {MAX_QUOTA}")
    if not 1 <= window <= MAX_WINDOW_SECONDS:
        raise ValueError(f"window {window}s is not between 1s and {MAX_WINDOW_SECONDS}s")
    return quota, window


_FAIL_MODES = {"fail=open": True, "fail=closed": False}


def parse_route_policy(entry: str) -> RateLimitPolicy:
    """`writes=20/60s POST,PATCH /api/ fail=closed` -> RateLimitPolicy."""
    head, *matchers = entry.split()
    name, sep, quota = head.partition("=")
    if not sep or not _POLICY_NAME.match(name) or name == "default":
        raise ValueError(
            f"{entry!r}: must start with NAME=QUOTA/WINDOW, NAME in lowercase letters, "
            "digits, - and _ (and not 'default')"
        )
    methods: frozenset[str] | None = None
    path_prefix: str | None = None
    fail_open: bool | None = None
    if matchers and matchers[-1].startswith("fail="):
        if matchers[-1] not in _FAIL_MODES:
            raise ValueError(f"{entry!r}: {matchers[-1]!r} is not fail=open or fail=closed")
        fail_open = _FAIL_MODES[matchers.pop()]
    for matcher in matchers:
        if matcher.startswith("/") and path_prefix is None:
            path_prefix = matcher
        elif matcher == "*" or (methods is None and not matcher.startswith(("/", "fail="))):
            methods = _parse_methods(entry, matcher)
        else:
            raise ValueError(
                f"{entry!r}: unexpected {matcher!r} (want [METHODS] [/PATH] [fail=open|closed])"
            )
    try:
        limits = parse_quota(quota)
    except ValueError as exc:
        raise ValueError(f"{entry!r}: {exc}") from None
    return RateLimitPolicy(name, *limits, methods, path_prefix, fail_open)


def _parse_methods(entry: str, text: str) -> frozenset[str] | None:
    if text == "*":
        return None
    methods = frozenset(method.upper() for method in _split(text, ","))
    if unknown := sorted(methods - HTTP_METHODS):
        raise ValueError(f"{entry!r}: unknown method {unknown[0]!r}")
    return methods


def parse_route_policies(text: str) -> tuple[RateLimitPolicy, ...]:
    policies = tuple(parse_route_policy(entry) for entry in _split(text, ";"))
    names = [policy.name for policy in policies]
    if duplicated := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"policy {duplicated[0]!r} is defined twice")
    return policies
