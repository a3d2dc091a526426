"""Prove the rate limit is exact across workers: several clients at once, each over
many connections spread on every worker, each allowed exactly its quota.

    parity verify rate-limit --native            # starts Gunicorn, 4 workers
    parity verify rate-limit --url http://127.0.0.1:8000
    parity verify rate-limit --compose           # the `docker compose up` stack

What it checks, per client ("identity"): allowed == expected (the quota, or what was
left of it), every other answer a 429 with `Retry-After`, and the `RateLimit-Policy` /
`RateLimit` fields consistent with the policy (each remaining count from quota-1 down
to 0 seen exactly once). Then the spoofing check: a client forging a new
`X-Forwarded-For` on every request from a peer that is not a trusted proxy is still
limited. With `--native` it also sees which worker process holds each connection
(/proc), so it reports how many requests of each client every worker decided, and
checks that a trusted proxy's `X-Forwarded-For` *is* honoured (else the spoofing check
would prove nothing). Exit status 1 on any deviation.

Each client is an API key the server issued (only a key whose hash is in the server's
RATE_LIMIT_API_KEY_HASHES is a client of its own; any other counts against the address):
`--native` issues its own and configures the server with their hashes. Against `--url`
or `--compose`, pass one `--api-key` per identity, issued to that server (e.g.
`python -m app.client_identity 4`, the hashes in its RATE_LIMIT_API_KEY_HASHES);
without them each client is an X-Forwarded-For address, which only a server that
trusts this host as a proxy believes (a native one: loopback is trusted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from app.client_identity import issue_key
from parity.harness.connections import (
    Connection,
    close_connections,
    open_connections,
)
from parity.harness.options import positive_int
from parity.harness.report import progress
from parity.harness.stack import (
    GunicornProcess,
    NativeStack,
    StackError,
    delete_redis_prefix,
    scratch_database,
)
from parity.harness.target import add_target_options, target_choice

DEFAULT_PATH = "/api/v1/products?limit=1"
# A loopback address other than 127.0.0.1: connecting from it makes us an untrusted
# peer of a server that trusts only 127.0.0.1 as a proxy.
UNTRUSTED_LOOPBACK = "127.0.0.2"


# --- Header parsing (a subset of RFC 8941 structured fields: one list member) --------

_MEMBER = re.compile(r'^\s*(?:"([^"\\]*)"|([A-Za-z*][\w:/!#$%&\'*+\-.^`|~]*))((?:;[^;]*)*)\s*$')


def parse_member(value: str | None) -> tuple[str, dict[str, str]] | None:
    """`"default";q=100;w=60` -> ("default", {"q": "100", "w": "60"}); None if malformed."""
    if value is None or "," in value:
        return None
    match = _MEMBER.match(value)
    if match is None:
        return None
    params = {}
    for param in match[3].split(";")[1:]:
        key, _, raw = param.strip().partition("=")
        params[key] = raw
    return match[1] if match[1] is not None else match[2], params


@dataclass(frozen=True)
class Policy:
    name: str
    quota: int
    window: int

    @classmethod
    def from_header(cls, value: str | None) -> Policy | None:
        member = parse_member(value)
        if member is None:
            return None
        name, params = member
        try:
            return cls(name, int(params["q"]), int(params["w"]))
        except (KeyError, ValueError):
            return None


# --- Driving one identity -------------------------------------------------------------


@dataclass
class IdentityReport:
    name: str
    requests: int
    expected_allowed: int
    allowed: int = 0
    limited: int = 0
    other_statuses: dict[str, int] = field(default_factory=dict)
    transport_errors: int = 0
    # 200s without RateLimit fields: the limiter could not ask Redis in time and
    # failed open (RATE_LIMIT_FAIL_OPEN); not a header bug, but not exact either.
    failed_open: int = 0
    retry_after_missing: int = 0
    header_errors: list[str] = field(default_factory=list)
    # worker pid -> {"allowed": n, "limited": n}; empty when workers are not observable
    by_worker: dict[str, dict[str, int]] = field(default_factory=dict)
    remaining_seen: list[int] = field(default_factory=list)
    # The remaining count of its first allowed request, when the identity may have used
    # quota before (the spoofer's address, shared with other clients of the target);
    # None: a fresh identity, quota - 1.
    first_remaining: int | None = None
    # Workers holding a connection this identity's requests went over: each of them
    # must have decided some (with many workers one may win no accept race at all).
    workers_held: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.allowed == self.expected_allowed
            and self.allowed + self.limited == self.requests
            and not self.header_errors
            and not self.retry_after_missing
            and not self.failed_open
        )


def check_headers(response: httpx.Response, policy: Policy) -> list[str]:
    """What is wrong with the rate-limit fields of one response ([] if nothing)."""
    errors = []
    stated = Policy.from_header(response.headers.get("ratelimit-policy"))
    if stated != policy:
        errors.append(f"RateLimit-Policy {response.headers.get('ratelimit-policy')!r}")
    member = parse_member(response.headers.get("ratelimit"))
    if member is None or member[0] != policy.name:
        errors.append(f"RateLimit {response.headers.get('ratelimit')!r}")
        return errors
    try:
        remaining, reset = int(member[1]["r"]), int(member[1]["t"])
    except (KeyError, ValueError):
        return [*errors, f"RateLimit {response.headers.get('ratelimit')!r}"]
    if not 0 <= remaining < policy.quota or not 1 <= reset <= policy.window:
        errors.append(f"RateLimit r={remaining} t={reset} outside the policy")
    if response.status_code == 429:
        if remaining != 0:
            errors.append(f"429 with r={remaining}")
        retry_after = response.headers.get("retry-after")
        if retry_after is not None and retry_after != str(reset):
            errors.append(f"Retry-After {retry_after} differs from t={reset}")
        if response.headers.get("content-type") != "application/problem+json":
            errors.append("429 is not application/problem+json")
    return errors


async def drive_identity(
    report: IdentityReport,
    connections: Sequence[Connection],
    path: str,
    policy: Policy,
    *,
    headers_for: Any,
    count: int,
    first: int = 0,
) -> None:
    """Send `count` requests, request i over connection (first + i) mod n, all at once
    (each connection carries one at a time), and tally the answers in `report`."""

    async def one(index: int) -> None:
        connection = connections[(first + index) % len(connections)]
        try:
            response = await connection.client.get(path, headers=headers_for(index))
        except httpx.TransportError:
            report.transport_errors += 1
            return
        outcome = {200: "allowed", 429: "limited"}.get(response.status_code)
        if outcome is None:
            key = str(response.status_code)
            report.other_statuses[key] = report.other_statuses.get(key, 0) + 1
            return
        setattr(report, outcome, getattr(report, outcome) + 1)
        if outcome == "allowed" and "ratelimit" not in response.headers:
            report.failed_open += 1
            return
        if connection.worker is not None:
            tally = report.by_worker.setdefault(str(connection.worker), Counter())
            tally[outcome] += 1
        report.header_errors.extend(check_headers(response, policy))
        if outcome == "limited" and "retry-after" not in response.headers:
            report.retry_after_missing += 1
        if outcome == "allowed" and (member := parse_member(response.headers.get("ratelimit"))):
            report.remaining_seen.append(int(member[1].get("r", -1)))

    await asyncio.gather(*(one(index) for index in range(count)))
    # Allowed answers count down from the identity's first remaining count (quota-1
    # for a fresh one), one value each (fewer requests than the quota stop above 0).
    top = policy.quota - 1 if report.first_remaining is None else report.first_remaining
    lowest = top + 1 - report.expected_allowed
    if sorted(report.remaining_seen) != list(range(lowest, top + 1)) and not report.header_errors:
        report.header_errors.append(
            f"remaining counts {sorted(report.remaining_seen)} are not each of {top}..{lowest} once"
        )
    report.by_worker = {pid: dict(tally) for pid, tally in sorted(report.by_worker.items())}


# --- The whole run ---------------------------------------------------------------------


@dataclass
class Run:
    base_url: str
    path: str
    identities: int
    requests_per_identity: int
    connections: int
    # One issued key per identity; none: each identity is a forwarded address instead.
    api_keys: Sequence[str] = ()
    server: GunicornProcess | None = None
    expected_policy: Policy | None = None
    # Source address of the spoofing client: an address the server must not trust.
    spoof_from: str | None = None
    # Check that a trusted proxy's X-Forwarded-For is honoured (only when we know our
    # own address is trusted: the native run).
    check_trusted_proxy: bool = False


async def discover_policy(base_url: str, path: str) -> Policy:
    """The policy the target applies to `path`, from its RateLimit-Policy field (one
    request of this address's quota: the spoofing check reads what is left)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        response = await client.get(path)
    policy = Policy.from_header(response.headers.get("ratelimit-policy"))
    if response.status_code != 200 or policy is None:
        raise StackError(
            f"GET {path} answered {response.status_code} with RateLimit-Policy "
            f"{response.headers.get('ratelimit-policy')!r}: is the limiter on?"
        )
    return policy


def forged_addresses(count: int) -> list[str]:
    """`count` distinct random addresses of 198.18.0.0/15 (RFC 2544: no real client)."""
    numbers = random.sample(range(2**17), count)
    return [f"198.{18 + n // 65536}.{n // 256 % 256}.{n % 256}" for n in numbers]


async def run_checks(run: Run) -> dict[str, Any]:
    policy = await discover_policy(run.base_url, run.path)
    progress(f"policy on {run.path}: {policy.name!r} q={policy.quota} w={policy.window}s")
    result: dict[str, Any] = {"policy": asdict(policy), "deviations": []}
    deviations: list[str] = result["deviations"]
    if run.expected_policy is not None and policy != run.expected_policy:
        deviations.append(f"policy is {policy}, configured {run.expected_policy}")

    progress(f"opening {run.connections}+ connections, one at a time")
    normal = await open_connections(run.base_url, count=run.connections, server=run.server)
    spoofing: list[Connection] = []
    if run.spoof_from is not None:
        spoofing = await open_connections(
            run.base_url, count=run.connections, server=run.server, local_address=run.spoof_from
        )
    try:
        result["workers"] = _worker_spread(run.server, normal, spoofing)
        started = time.monotonic()
        reports = await _drive_all(run, policy, normal, spoofing)
        elapsed = time.monotonic() - started
    finally:
        await close_connections([*normal, *spoofing])
    result["elapsed_seconds"] = round(elapsed, 3)
    result["identities"] = [{**asdict(r), "ok": r.ok} for r in reports]
    if elapsed >= policy.window:
        deviations.append(f"the run took {elapsed:.1f}s, longer than the {policy.window}s window")
    for report in reports:
        deviations.extend(_identity_deviations(report, result["workers"]))
    if run.check_trusted_proxy:
        result["trusted_proxy"] = await _trusted_proxy_check(run, policy)
        if not result["trusted_proxy"]["ok"]:
            deviations.append("X-Forwarded-For from a trusted proxy was not honoured")
    result["exempt"] = await _exempt_check(run, policy)
    if not result["exempt"]["ok"]:
        deviations.append(f"/health was limited or carried RateLimit fields: {result['exempt']}")
    result["ok"] = not deviations
    return result


def _worker_spread(
    server: GunicornProcess | None, normal: list[Connection], spoofing: list[Connection]
) -> dict[str, Any]:
    if server is None:
        return {"observable": False}
    pids = server.worker_pids()
    held = Counter(c.worker for c in [*normal, *spoofing])
    return {
        "observable": True,
        "pids": pids,
        "connections_per_worker": {str(pid): held[pid] for pid in pids},
        "unattributed_connections": held[None],
    }


def held_by(connections: Sequence[Connection]) -> list[str]:
    """The pids of the workers holding these connections (those that could be told)."""
    return sorted({str(c.worker) for c in connections if c.worker is not None})


async def _drive_all(
    run: Run, policy: Policy, normal: list[Connection], spoofing: list[Connection]
) -> list[IdentityReport]:
    requests = run.requests_per_identity
    jobs = []
    reports = []
    addresses = forged_addresses(run.identities)
    for number in range(run.identities):
        if run.api_keys:
            name, key = f"api-key-{number + 1}", {"X-API-Key": run.api_keys[number]}
        else:
            name, key = f"forwarded-{number + 1}", {"X-Forwarded-For": addresses[number]}
        report = IdentityReport(name, requests, min(policy.quota, requests))
        report.workers_held = held_by(normal)
        jobs.append(
            drive_identity(
                report,
                normal,
                run.path,
                policy,
                headers_for=lambda _, k=key: k,
                count=requests,
                first=number,
            )
        )
        reports.append(report)
    if spoofing:
        forged = forged_addresses(requests + 1)
        left = await _probe(spoofing[0], run.path, forged[-1])
        if run.expected_policy is not None and left != policy.quota - 1:
            raise StackError(f"{run.spoof_from} had used quota before the run ({left} left)")
        report = IdentityReport(f"spoofer@{run.spoof_from}", requests, min(left or 0, requests))
        report.workers_held = held_by(spoofing)
        if left is not None:  # the probe counts as the identity's first request
            report.requests += 1
            report.expected_allowed += 1
            report.allowed += 1
            report.remaining_seen.append(left)
            report.first_remaining = left

        def forge(index: int) -> dict[str, str]:
            return {"X-Forwarded-For": forged[index]}

        jobs.append(
            drive_identity(report, spoofing, run.path, policy, headers_for=forge, count=requests)
        )
        reports.append(report)
    progress(
        f"driving {len(reports)} identities x {requests} requests over "
        f"{len(normal) + len(spoofing)} connections, all at once"
    )
    await asyncio.gather(*jobs)
    return reports


async def _probe(connection: Connection, path: str, forged: str) -> int | None:
    """One request ahead of the burst; the remaining count the server states, or None
    if refused. An earlier run against the same server may have spent some of the
    spoofing address's quota; a native run starts from a fresh key prefix."""
    response = await connection.client.get(path, headers={"X-Forwarded-For": forged})
    member = parse_member(response.headers.get("ratelimit"))
    if response.status_code != 200 or member is None:
        return None
    return int(member[1].get("r", 0))


def _identity_deviations(report: IdentityReport, workers: dict[str, Any]) -> list[str]:
    found = []
    name = report.name
    if report.allowed != report.expected_allowed:
        found.append(f"{name}: {report.allowed} allowed, expected {report.expected_allowed}")
    if report.other_statuses or report.transport_errors:
        found.append(
            f"{name}: unexpected answers {report.other_statuses}, "
            f"{report.transport_errors} transport errors"
        )
    if report.failed_open:
        found.append(f"{name}: {report.failed_open} let through unchecked (Redis too slow)")
    if report.retry_after_missing:
        found.append(f"{name}: {report.retry_after_missing} 429s without Retry-After")
    found.extend(f"{name}: {error}" for error in sorted(set(report.header_errors))[:5])
    if workers.get("observable"):
        if len(workers["pids"]) > 1 and len(report.workers_held) < 2:
            found.append(f"{name}: its connections reached one worker, nothing shown across them")
        silent = [pid for pid in report.workers_held if pid not in report.by_worker]
        if silent:
            found.append(f"{name}: workers {', '.join(silent)} decided none of its requests")
    return found


async def _trusted_proxy_check(run: Run, policy: Policy) -> dict[str, Any]:
    """From a trusted proxy (127.0.0.1 natively), each forwarded address is its own
    client: quota + 5 requests for distinct addresses must all be allowed."""
    count = policy.quota + 5
    async with httpx.AsyncClient(base_url=run.base_url, timeout=30) as client:
        responses = [
            await client.get(run.path, headers={"X-Forwarded-For": address})
            for address in forged_addresses(count)
        ]
    statuses = Counter(response.status_code for response in responses)
    return {"requests": count, "statuses": dict(statuses), "ok": statuses == {200: count}}


async def _exempt_check(run: Run, policy: Policy) -> dict[str, Any]:
    count = policy.quota + 5
    async with httpx.AsyncClient(base_url=run.base_url, timeout=30) as client:
        responses = [await client.get("/health") for _ in range(count)]
    statuses = Counter(r.status_code for r in responses)
    with_fields = sum("ratelimit" in r.headers for r in responses)
    return {
        "path": "/health",
        "requests": count,
        "statuses": dict(statuses),
        "with_ratelimit_fields": with_fields,
        "ok": statuses == {200: count} and with_fields == 0,
    }


# --- CLI ---------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="parity verify rate-limit",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 all checks passed, 1 a deviation, 2 the target could not be used.",
    )
    add_target_options(parser, ("native", "compose", "url"))
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"route to drive ({DEFAULT_PATH})")
    parser.add_argument("--identities", type=positive_int, default=4, help="API-key clients (4)")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        dest="api_keys",
        help="an API key the target issued (its hash in RATE_LIMIT_API_KEY_HASHES), one per "
        "identity; --url and --compose only (--native issues its own)",
    )
    parser.add_argument(
        "--requests", type=positive_int, help="requests per client (default: 3 x the quota)"
    )
    parser.add_argument(
        "--connections", type=positive_int, default=16, help="connections per client group (16)"
    )
    native = parser.add_argument_group("--native only")
    native.add_argument("--workers", type=positive_int, default=4, help="Gunicorn workers (4)")
    native.add_argument("--quota", type=positive_int, default=20, help="policy quota (20)")
    native.add_argument("--window", type=positive_int, default=60, help="policy window, s (60)")
    native.add_argument(
        "--database-url",
        help="a database to prepare (migrate, seed) and use; default: one of this run's own "
        "on DATABASE_URL's server (or the local one), dropped afterwards",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    args.target = target_choice(parser, args)
    return args


@contextmanager
def native_server(args: argparse.Namespace) -> Iterator[tuple[GunicornProcess, Policy]]:
    """A Gunicorn of our own: `--workers` workers, a small dedicated policy, a fresh
    Redis key prefix (deleted afterwards), `args.api_keys` issued (their hashes
    configured), and 127.0.0.1 as the only trusted proxy."""
    prefix = f"parity-verify-{uuid.uuid4().hex[:12]}:"
    policy = Policy("default", args.quota, args.window)
    # --database-url: that database, prepared and kept; else one of this run's own.
    progress("preparing the database (migrate, seed 10 products)")
    with scratch_database("verify_rl", 10, args.database_url) as url:
        stack = NativeStack(database_url=url)
        yield from _serve(stack, args, prefix, policy)


def _serve(stack: NativeStack, args: argparse.Namespace, prefix: str,
           policy: Policy) -> Iterator[tuple[GunicornProcess, Policy]]:  # fmt: skip
    env = {
        "REDIS_KEY_PREFIX": prefix,
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_DEFAULT": f"{args.quota}/{args.window}s",
        "RATE_LIMIT_ROUTES": "",
        "RATE_LIMIT_EXEMPT_PATHS": "/health,/ready,/metrics",
        "RATE_LIMIT_KEY_HEADER": "X-API-Key",
        "RATE_LIMIT_API_KEY_HASHES": ",".join(args.api_key_hashes),
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "LOG_LEVEL": "info",  # the stack waits for each worker's startup line
        # The bound on a Redis call includes the time the worker's event loop is busy
        # with other requests: 4 workers and this load generator on 2 shared cores can
        # exceed the 0.25 s default, and the limiter would (correctly) fail open.
        "REDIS_TIMEOUT_SECONDS": "2",
    }
    progress(f"starting Gunicorn with {args.workers} workers, policy {args.quota}/{args.window}s")
    server = stack.start_gunicorn(workers=args.workers, env=env, host="127.0.0.1")
    try:
        yield server, policy
        warnings = [r for r in server.log_records() if r.get("level") in {"WARNING", "ERROR"}]
        for record in warnings[:10]:
            progress(f"server {record['level'].lower()}: {record.get('message')}")
    finally:
        server.stop()
        delete_redis_prefix(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), prefix)


def _loopback_ipv4(base_url: str) -> bool:
    return (urlsplit(base_url).hostname or "").startswith("127.")


def _summary(result: dict[str, Any]) -> str:
    policy = result["policy"]
    lines = [
        f"policy {policy['name']!r}: {policy['quota']} requests per {policy['window']} s; "
        f"burst took {result['elapsed_seconds']} s",
        "",
        f"{'identity':<22} {'requests':>8} {'allowed':>8} {'expected':>8} {'limited':>8} "
        f"{'unchecked':>9}  headers  Retry-After  result",
    ]
    for identity in result["identities"]:
        headers = "ok" if not identity["header_errors"] else "WRONG"
        retry = "ok" if not identity["retry_after_missing"] else "MISSING"
        lines.append(
            f"{identity['name']:<22} {identity['requests']:>8} {identity['allowed']:>8} "
            f"{identity['expected_allowed']:>8} {identity['limited']:>8} "
            f"{identity['failed_open']:>9}  {headers:<7}  "
            f"{retry:<11}  {'ok' if identity['ok'] else 'DEVIATION'}"
        )
    workers = result["workers"]
    lines.append("")
    if workers["observable"]:
        lines.append(f"workers: {len(workers['pids'])}; connections held per worker pid:")
        lines.extend(f"  {pid}: {n}" for pid, n in workers["connections_per_worker"].items())
        lines.append("requests decided per worker (allowed/limited), per identity:")
        for identity in result["identities"]:
            cells = ", ".join(
                f"{pid} {t.get('allowed', 0)}/{t.get('limited', 0)}"
                for pid, t in identity["by_worker"].items()
            )
            lines.append(f"  {identity['name']:<20} {cells}")
    else:
        lines.append("workers: not observable from here (run --native to see each worker)")
    if "trusted_proxy" in result:
        proxy = result["trusted_proxy"]
        lines.append(
            f"trusted proxy 127.0.0.1, {proxy['requests']} distinct X-Forwarded-For: "
            f"{proxy['statuses']} -> {'honoured' if proxy['ok'] else 'NOT HONOURED'}"
        )
    exempt = result["exempt"]
    lines.append(
        f"exempt {exempt['path']}: {exempt['statuses']}, "
        f"{exempt['with_ratelimit_fields']} with RateLimit fields"
    )
    lines.append("")
    if result["ok"]:
        reached = {pid for identity in result["identities"] for pid in identity["workers_held"]}
        across = ""
        if workers["observable"]:
            across = f", decided by each of the {len(reached)} workers holding its connections"
            if len(reached) == len(workers["pids"]):
                across = ", decided by every worker"
        lines.append(f"OK: every client got exactly its quota{across}")
    else:
        lines.append("DEVIATIONS:")
        lines.extend(f"  - {deviation}" for deviation in result["deviations"])
    return "\n".join(lines)


def _run(run: Run) -> dict[str, Any]:
    return asyncio.run(run_checks(run))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not args.target.native:
        if args.api_keys and len(args.api_keys) < args.identities:
            progress(
                f"error: {args.identities} identities need {args.identities} --api-key "
                f"(keys the target issued: RATE_LIMIT_API_KEY_HASHES), got {len(args.api_keys)}"
            )
            return 2
        if not args.api_keys:
            progress(
                "no --api-key: each client is an X-Forwarded-For address (the target "
                "must trust this host as a proxy, as a native server trusts loopback)"
            )
    elif args.api_keys:
        progress("error: --api-key is for --url and --compose; --native issues its own")
        return 2
    else:
        issued = [issue_key() for _ in range(args.identities)]
        args.api_keys = [key for key, _ in issued]
        args.api_key_hashes = [digest for _, digest in issued]
    try:
        if not args.target.native:
            base_url = args.target.url
            policy = asyncio.run(discover_policy(base_url, args.path))
            run = Run(
                base_url,
                args.path,
                args.identities,
                args.requests or 3 * policy.quota,
                args.connections,
                api_keys=args.api_keys,
                spoof_from=UNTRUSTED_LOOPBACK if _loopback_ipv4(base_url) else None,
            )
            result = _run(run)
        else:
            with native_server(args) as (server, policy):
                run = Run(
                    server.base_url,
                    args.path,
                    args.identities,
                    args.requests or 3 * policy.quota,
                    args.connections,
                    api_keys=args.api_keys,
                    server=server,
                    expected_policy=policy,
                    spoof_from=UNTRUSTED_LOOPBACK,
                    check_trusted_proxy=True,
                )
                result = _run(run)
    except (StackError, httpx.HTTPError, OSError) as exc:
        progress(f"error: {exc}")
        return 2
    print(json.dumps(result, indent=2) if args.json else _summary(result))
    return 0 if result["ok"] else 1
