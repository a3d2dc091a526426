"""Locust scenarios for the parity API: browse, buy, burst and a realistic mix.

    locust -f loadtest/locustfile.py --config loadtest/locust.conf            # web UI :8089
    locust --config loadtest/locust.conf --headless --tags browse -t 1m \\
           --csv results/run --html results/run.html                         # headless
    make loadtest SCENARIO=buy SHAPE=step                                     # the same

Scenarios are user classes, each with its own tag, so `--tags browse` (or naming the
class, `BrowseUser`) runs one of them:

- browse (BrowseUser): keyset list pages, product reads from a small cache-hot set of ids
  and cache-cold reads across the whole seeded catalogue.
- buy (BuyUser): orders with an `Idempotency-Key`; some POSTs are retried with the same
  key and must replay the first order (201, `Idempotent-Replayed: true`, same id).
- burst (BurstUser): one client far over the rate limit. A 429 carrying `Retry-After`
  and the RateLimit headers is the expected answer, counted as a success; anything else
  that is not a 2xx is a failure.
- mixed (MixedUser): a weighted blend of browsing and buying with think time.

The rate limiter counts per client, so every simulated user is a client of its own: it
sends an address of its own as `X-Forwarded-For` (198.18.0.0/15, no real client), which
a server believes from a trusted proxy (FORWARDED_ALLOW_IPS: loopback natively, so a
generator on the same host is one). `--identity request` makes every request a new
client instead (capacity tests: the limiter does all its work and never limits);
`--identity none` sends nothing, so all users are one client (the generator's address).
Burst users always keep one identity each. Where the generator is no trusted proxy
(behind compose's lb, which replaces X-Forwarded-For), send API keys the server issued
instead: `--identity-header X-API-Key --api-keys FILE` (one key a line, handed out in
turn; `python -m app.client_identity N` issues them, docs/loadtest.md). A made-up key is
no identity: the server counts its requests against the address.
With the default think time every scenario stays below the default quotas (100/min,
20 writes/min): buyers pause six times as long as browsers.

Load shapes (`--shape`): `constant` (-u users at -r per second for -t), `step` (add
`--step-users` every `--step-seconds` up to -u: find the knee) and `spike` (a baseline of
a fifth of -u, then all of -u at once for `--spike-seconds`, then back).

At the end it prints, and with `--csv PREFIX` writes to `PREFIX_parity.json` (and
`PREFIX_steps.csv` for the step shape), the per-scenario tallies, the step table with
its knee, and the CPU Locust itself used: on a small machine the generator competes with
the server, so read every result next to that figure. `--prometheus-port` exports the
client-side statistics (`locust_*`) for Prometheus and the Load test dashboard.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, ClassVar

import gevent
from locust import FastHttpUser, LoadTestShape, constant, events, tag, task
from locust.env import Environment

# Locust imports this file by path; its sibling module comes from the same directory
# wherever loadtest/ is mounted (the compose service mounts the whole directory).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadstats

logger = logging.getLogger("parity.loadtest")

PRODUCTS = "/api/v1/products"
ORDERS = "/api/v1/orders"
# Request names are the server's route templates (its `http_route` label), so the
# client-side and server-side latency of a route line up on the Load test dashboard;
# a suffix tells variants of one route apart.
PRODUCT = PRODUCTS + "/{product_id}"
ORDER = ORDERS + "/{order_id}"
SCENARIOS = ("browse", "buy", "burst", "mixed")
RATE_LIMIT_HEADERS = ("retry-after", "ratelimit", "ratelimit-policy")
FORWARDED_FOR = "X-Forwarded-For"


# --- command line ------------------------------------------------------------------


def _positive(kind: type, name: str) -> Any:
    """An argparse type: a non-negative number, or a message naming the bad value."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{name} must not be negative, got {text!r}")
        return value

    return parse


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    def option(name: str, *, web_ui: bool = True, **kwargs: Any) -> None:
        env = "LOCUST_" + name.lstrip("-").upper().replace("-", "_")
        parser.add_argument(name, env_var=env, include_in_web_ui=web_ui, **kwargs)

    option(
        "--shape",
        choices=("constant", "step", "spike"),
        default="constant",
        help="load shape: constant (-u/-r/-t), step (ramp to find the knee) or spike",
    )
    option(
        "--step-users",
        type=_positive(int, "--step-users"),
        default=10,
        help="step shape: users added per step (default 10)",
    )
    option(
        "--step-seconds",
        type=_positive(float, "--step-seconds"),
        default=30.0,
        help="step shape: length of a step (default 30)",
    )
    option(
        "--spike-seconds",
        type=_positive(float, "--spike-seconds"),
        default=0.0,
        help="spike shape: length of the spike (default: a sixth of -t, else 30)",
    )
    option(
        "--product-count",
        web_ui=False,
        type=_positive(int, "--product-count"),
        default=10_000,
        help="products seeded in the target (ids 1..N; default 10000)",
    )
    option(
        "--hot-products",
        web_ui=False,
        type=_positive(int, "--hot-products"),
        default=20,
        help="ids 1..N are the cache-hot set (default 20)",
    )
    option(
        "--think-time",
        type=_positive(float, "--think-time"),
        default=1.0,
        help="mean pause between a browse/buy/mixed user's requests, seconds; "
        "0 = closed loop, as fast as the server answers (default 1)",
    )
    option(
        "--retry-ratio",
        type=_positive(float, "--retry-ratio"),
        default=0.2,
        help="share of orders whose POST is retried with the same key (default 0.2)",
    )
    option(
        "--identity",
        web_ui=False,
        choices=("user", "request", "none"),
        default="user",
        help="rate-limit identity: one per user (default), a new one per request, or none",
    )
    option(
        "--identity-header",
        web_ui=False,
        default=FORWARDED_FOR,
        help="header carrying the identity: X-Forwarded-For (default: an address per "
        "identity) or the API's RATE_LIMIT_KEY_HEADER with --api-keys",
    )
    option(
        "--api-keys",
        web_ui=False,
        default="",
        help="file of API keys the target issued, one a line, for a key --identity-header",
    )
    option(
        "--prometheus-port",
        web_ui=False,
        type=_positive(int, "--prometheus-port"),
        default=0,
        help="serve locust_* metrics for Prometheus on this port (default 0: off)",
    )
    option(
        "--prometheus-host",
        web_ui=False,
        default="127.0.0.1",
        help="address of the metrics endpoint (0.0.0.0 in a container)",
    )


@events.init.add_listener
def check_options(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    if options.hot_products < 1 or options.product_count <= options.hot_products:
        raise SystemExit(
            f"--hot-products={options.hot_products} must be at least 1 and below "
            f"--product-count={options.product_count}"
        )
    if options.retry_ratio > 1:
        raise SystemExit(f"--retry-ratio={options.retry_ratio} must be between 0 and 1")
    Identities.load(options)
    if options.headless and options.host:
        _check_target(options.host)
    _keep_user_classes_with_tasks(environment)


def _check_target(host: str) -> None:
    """Headless runs fail in a second when nothing answers at `host`, instead of running
    their whole duration at 100% failures and saying "Connection refused" at the end.
    (The web UI takes its host later, so it is not checked there.)"""
    url = host.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (our own URL)
            response.read()
    except urllib.error.HTTPError:
        return  # something answers HTTP: let the run report what it gets
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SystemExit(
            f"no API answers at {host} ({reason}): start one (`make run`, or "
            "`make up` for compose) or point the load elsewhere (make loadtest HOST=...)"
        ) from None


def _keep_user_classes_with_tasks(environment: Environment) -> None:
    """With `--tags buy`, the other classes have no task left and Locust would fail to
    spawn them: drop them, so a tag selects a scenario."""
    options = environment.parsed_options
    tags = set(options.tags or ()) if options else set()
    excluded = set(options.exclude_tags or ()) if options else set()

    def selected(user_class: type) -> bool:
        task_tags = [getattr(t, "locust_tag_set", set()) for t in user_class.tasks]
        return any((not tags or t & tags) and not t & excluded for t in task_tags)

    kept = [user_class for user_class in environment.user_classes if selected(user_class)]
    if not kept:
        raise SystemExit(f"no scenario matches --tags {sorted(tags)} (known: {SCENARIOS})")
    environment.user_classes[:] = kept


# --- the scenarios ------------------------------------------------------------------


class Identities:
    """What the identity header carries: addresses for X-Forwarded-For, else issued keys
    (read once, by `check_options`).

    Addresses are synthetic (198.18.0.0/15, RFC 2544: no real client): burst users in
    198.19.0.0/16, the others in 198.18.0.0/16, from an offset random per run. A burst
    user spends its quota; a run started right after (the same server, the same window)
    must not find its users' quotas spent (a demo after the scenario run did: 2 failed).
    """

    api_keys: ClassVar[list[str]] = []
    offset = random.randrange(65536)

    @classmethod
    def load(cls, options: Any) -> None:
        header = options.identity_header
        if options.identity == "none" or not header or header.lower() == FORWARDED_FOR.lower():
            return
        if not options.api_keys:
            raise SystemExit(
                f"--identity-header {header} needs --api-keys FILE: keys the target issued "
                "(a made-up key is no identity: the server counts it as the address)"
            )
        try:
            lines = Path(options.api_keys).read_text().split()
        except OSError as exc:
            raise SystemExit(f"--api-keys {options.api_keys}: {exc.strerror}") from None
        # `python -m app.client_identity N` prints `KEY HASH` lines: keep the keys.
        cls.api_keys = [word for word in lines if len(word) != 64 or not _is_hex(word)]
        if not cls.api_keys:
            raise SystemExit(f"--api-keys {options.api_keys} holds no key")

    @classmethod
    def value(cls, header: str, number: int, *, burst: bool = False) -> str:
        if header.lower() == FORWARDED_FOR.lower():
            n = (cls.offset + number) % 65536
            return f"198.{19 if burst else 18}.{n // 256}.{n % 256}"
        return cls.api_keys[number % len(cls.api_keys)]


def _is_hex(word: str) -> bool:
    return all(c in "0123456789abcdef" for c in word.lower())


def _think(user: ParityUser) -> float:
    options = user.environment.parsed_options
    mean = (options.think_time if options else 1.0) * user.think_factor
    return random.uniform(0.5 * mean, 1.5 * mean) if mean else 0.0


class ParityUser(FastHttpUser):
    """What every scenario shares: a client identity, response checks, the tallies."""

    abstract = True
    scenario = "?"
    wait_time = _think
    think_factor = 1.0
    _next_index = 0

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        ParityUser._next_index += 1
        options = environment.parsed_options
        self.identity_mode = options.identity if options else "user"
        self.identity_header = options.identity_header if options else FORWARDED_FOR
        self.identity = Identities.value(
            self.identity_header, ParityUser._next_index, burst=self.scenario == "burst"
        )
        self.product_count = options.product_count if options else 10_000
        self.hot_products = options.hot_products if options else 20
        self.retry_ratio = options.retry_ratio if options else 0.2
        self.cursor: str | None = None

    def context(self) -> dict[str, Any]:
        return {"scenario": self.scenario}

    def headers(self, **extra: str) -> dict[str, str]:
        """The client identity (see the module docstring) plus `extra`."""
        if self.identity_mode == "none" or not self.identity_header:
            return extra
        identity = self.identity
        if self.identity_mode == "request" and self.scenario != "burst":
            identity = Identities.value(self.identity_header, random.getrandbits(32))
        return {self.identity_header: identity, **extra}

    # -- browse ---------------------------------------------------------------------

    def list_page(self) -> None:
        """Page forward through the catalogue like a reader; start over at the end."""
        path = PRODUCTS + "?limit=20" + (f"&cursor={self.cursor}" if self.cursor else "")
        with self.client.get(
            path, name=PRODUCTS, headers=self.headers(), catch_response=True
        ) as response:
            body = _expect_json(response, 200)
            if body is not None:
                if len(body.get("items", ())) == 0:
                    response.failure("an empty page")
                self.cursor = body.get("next_cursor") if random.random() < 0.8 else None

    def read_product(self, hot: bool) -> None:
        low = 1 if hot else self.hot_products + 1
        high = self.hot_products if hot else self.product_count
        product_id = random.randint(low, high)
        name = f"{PRODUCT} ({'hot' if hot else 'cold'})"
        with self.client.get(
            f"{PRODUCTS}/{product_id}", name=name, headers=self.headers(), catch_response=True
        ) as response:
            body = _expect_json(response, 200)
            if body is not None and body.get("id") != product_id:
                response.failure(f"asked for product {product_id}, got {body.get('id')}")

    # -- buy ------------------------------------------------------------------------

    def place_order(self) -> None:
        """Order 1-3 cold products (orders invalidate their cache entries, which would
        turn the hot set cold). Some POSTs are retried as a client whose first attempt
        timed out would: same key, same body, and the first order must come back."""
        count = random.randint(1, 3)
        ids = random.sample(range(self.hot_products + 1, self.product_count + 1), count)
        body = {"items": [{"product_id": i, "quantity": random.randint(1, 2)} for i in ids]}
        key = str(uuid.uuid4())
        headers = self.headers(**{"Idempotency-Key": key})
        with self.client.post(ORDERS, json=body, headers=headers, catch_response=True) as first:
            order = _expect_json(first, 201)
        if order is None:
            return
        if random.random() < self.retry_ratio:
            with self.client.post(
                ORDERS, json=body, headers=headers, name=ORDERS + " (retry)", catch_response=True
            ) as retry:
                replay = _expect_json(retry, 201)
                if replay is not None:
                    if retry.headers.get("Idempotent-Replayed") != "true":
                        retry.failure("a retried POST was not answered as a replay")
                    elif replay.get("id") != order.get("id"):
                        retry.failure(
                            f"replay returned order {replay.get('id')}, "
                            f"not {order.get('id')}: the order was placed twice"
                        )
        with self.client.get(
            f"{ORDERS}/{order['id']}", name=ORDER, headers=self.headers(), catch_response=True
        ) as response:
            _expect_json(response, 200)

    # -- burst ----------------------------------------------------------------------

    def hammer(self) -> None:
        """A client that ignores Retry-After. The limiter answering 429 (with the headers
        a client needs to back off) is the scenario working."""
        path = f"{PRODUCTS}/{random.randint(1, self.hot_products)}"
        with self.client.get(
            path, name=PRODUCT + " (burst)", headers=self.headers(), catch_response=True
        ) as response:
            if response.status_code == 429:
                missing = [h for h in RATE_LIMIT_HEADERS if h not in response.headers]
                if missing:
                    response.failure(f"429 without {', '.join(missing)}")
                else:
                    response.success()
            else:
                _expect_json(response, 200)


class BrowseUser(ParityUser):
    weight = 6
    scenario = "browse"

    @tag("browse")
    @task(5)
    def hot_product(self) -> None:
        self.read_product(hot=True)

    @tag("browse")
    @task(2)
    def cold_product(self) -> None:
        self.read_product(hot=False)

    @tag("browse")
    @task(2)
    def products_page(self) -> None:
        self.list_page()


class BuyUser(ParityUser):
    weight = 3
    scenario = "buy"
    think_factor = 6.0  # stays below the default write quota of 20/min per client

    @tag("buy")
    @task
    def order(self) -> None:
        self.place_order()


class BurstUser(ParityUser):
    weight = 1
    scenario = "burst"
    wait_time = constant(0)

    @tag("burst")
    @task
    def burst(self) -> None:
        self.hammer()


class MixedUser(ParityUser):
    """Roughly a shop's traffic: mostly reads of popular products, some catalogue
    paging and long-tail reads, a few orders."""

    weight = 10
    scenario = "mixed"

    @tag("mixed")
    @task(10)
    def hot_product(self) -> None:
        self.read_product(hot=True)

    @tag("mixed")
    @task(4)
    def cold_product(self) -> None:
        self.read_product(hot=False)

    @tag("mixed")
    @task(3)
    def products_page(self) -> None:
        self.list_page()

    @tag("mixed")
    @task(1)
    def order(self) -> None:
        self.place_order()


def _expect_json(response: Any, status: int) -> dict[str, Any] | None:
    """Mark the response failed unless it has `status` and a JSON object body."""
    if response.status_code != status:
        detail = (response.text or "")[:200] if response.status_code else response.error
        response.failure(f"expected {status}, got {response.status_code}: {detail}")
        return None
    try:
        body = response.json()
    except ValueError:
        response.failure("the body is not JSON")
        return None
    if not isinstance(body, dict):
        response.failure("the body is not a JSON object")
        return None
    response.success()
    return body


# --- load shape and reporting ------------------------------------------------------


class ScenarioShape(LoadTestShape):
    """`--shape constant|step|spike` (loadstats.shape_tick); -u, -r and -t keep their
    meaning in every shape, in the web UI too."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options if self.runner else None
        if options is None:
            return None
        return loadstats.shape_tick(
            options.shape,
            self.get_run_time(),
            users=options.num_users or 1,
            spawn_rate=options.spawn_rate or 1,
            run_time=options.run_time or 0,
            step_users=options.step_users or 1,
            step_seconds=options.step_seconds or 30,
            spike_seconds=options.spike_seconds,
        )


class State:
    report: loadstats.Report | None = None
    exporter: loadstats.Exporter | None = None


@events.init.add_listener
def start_exporter(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if options is not None and options.prometheus_port:
        State.exporter = loadstats.Exporter()
        State.exporter.serve(options.prometheus_host, options.prometheus_port)
        logger.info(
            "locust_* metrics on http://%s:%d/metrics",
            options.prometheus_host,
            options.prometheus_port,
        )


@events.test_start.add_listener
def start_report(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    step_seconds = options.step_seconds if options and options.shape == "step" else 0
    State.report = report = loadstats.Report(step_seconds)
    gevent.spawn(_sample_cpu, environment, report)


PROGRESS_EVERY_SECONDS = 10


def _sample_cpu(environment: Environment, report: loadstats.Report) -> None:
    """Every 2 s: the generator's CPU (and the exporter's gauges); every 10 s, in a
    headless run, one progress line (locust.conf's only-summary leaves it silent
    otherwise until the end)."""
    options = environment.parsed_options
    headless = bool(options and options.headless)
    ticks = 0
    while State.report is report and environment.runner is not None:
        gevent.sleep(2)
        if environment.runner.state not in ("spawning", "running"):
            return
        percent = report.sample_cpu()
        if State.exporter:
            State.exporter.cpu.set(percent)
            State.exporter.users.set(environment.runner.user_count)
        ticks += 1
        if headless and ticks * 2 % PROGRESS_EVERY_SECONDS == 0:
            _log_progress(environment, ticks * 2)


def _log_progress(environment: Environment, seconds: int) -> None:
    total = environment.stats.total
    logger.info(
        "%d s: %d users, %d requests (%.0f req/s now), %d failed",
        seconds,
        environment.runner.user_count if environment.runner else 0,
        total.num_requests,
        total.current_rps,
        total.num_failures,
    )


@events.request.add_listener
def record_request(
    request_type: str,
    name: str,
    response_time: float,
    exception: Any,
    context: dict[str, Any],
    response: Any = None,
    **_: Any,
) -> None:
    scenario = (context or {}).get("scenario", "other")
    status = getattr(response, "status_code", 0) or 0
    failed = exception is not None
    if State.report is not None:
        State.report.record(scenario, status, failed, response_time)
    if State.exporter is not None:
        State.exporter.record(scenario, name, request_type, status, failed, response_time / 1000)


@events.quitting.add_listener
def print_report(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if State.report is None or options is None:
        return
    summary = State.report.summary(users=options.num_users or 0, step_users=options.step_users)
    for line in loadstats.describe(summary):
        logger.info(line)
    if options.csv_prefix:
        loadstats.write_summary(options.csv_prefix, summary)
