"""The shutdown budget holds wherever its numbers are set (docs/shutdown.md):

    delay + drain timeout + cut-off grace + lifespan shutdown  <  Gunicorn graceful_timeout
    graceful_timeout  <  compose stop_grace_period
    preStop sleep + graceful_timeout  <  k8s terminationGracePeriodSeconds

and the load balancer in front of the compose replicas (docker/haproxy/haproxy.cfg)
reads it in time:

    check inter + (fall - 1) x fastinter + check timeout  <  delay
    drain timeout  <  timeout server;  hard-stop-after  <  lb stop_grace_period

Each source of numbers is one `budgets_from_*` function returning a `Budget` per place it
sets them; a new source (another manifest, a Helm chart) is one more function in
`SOURCES`. A source that is not in the repository (yet) contributes nothing.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from app.settings import CUT_OFF_GRACE_SECONDS, Settings
from parity.harness.repo import REPO_ROOT
from tests.helpers import run

SHUTDOWN_VARIABLES = (
    "SHUTDOWN_DELAY_SECONDS",
    "SHUTDOWN_DRAIN_TIMEOUT_SECONDS",
    "SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS",
    "GUNICORN_GRACEFUL_TIMEOUT",
)


@dataclass(frozen=True)
class Budget:
    """The shutdown numbers in force at one place; `outer_grace` is how long the
    orchestrator waits after it starts stopping before it SIGKILLs (None natively)."""

    source: str
    delay: float
    drain: float
    lifespan: float
    graceful_timeout: float
    outer_grace: float | None = None
    pre_stop_sleep: float = 0.0

    @property
    def worker_shutdown(self) -> float:
        return self.delay + self.drain + CUT_OFF_GRACE_SECONDS + self.lifespan


def settings_with(environment: Mapping[str, str]) -> Budget:
    """The numbers the app would use with these variables set, the rest its defaults
    (read from the field definitions: not validated, so an over-budget file is reported
    by the checks below rather than breaking collection)."""

    def value(name: str) -> float:
        default = Settings.model_fields[name].default
        return float(environment.get(name, default))

    return Budget(
        source="",
        delay=value("SHUTDOWN_DELAY_SECONDS"),
        drain=value("SHUTDOWN_DRAIN_TIMEOUT_SECONDS"),
        lifespan=value("SHUTDOWN_LIFESPAN_TIMEOUT_SECONDS"),
        graceful_timeout=value("GUNICORN_GRACEFUL_TIMEOUT"),
    )


def seconds(value: Any) -> float:
    """`40s`, `1m30s`, `45`, 45 -> seconds."""
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {value!r}")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * unit[u] for n, u in parts)


def interpolated(value: Any) -> str:
    """Compose's `${VAR:-default}` / `${VAR-default}` -> the default (what runs when the
    variable is not exported); anything else as it is."""
    match = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", str(value).strip())
    return match.group(1) if match else str(value)


def as_environment(entries: Any) -> dict[str, str]:
    """A compose `environment` (mapping or KEY=VALUE list) or a k8s `env` list."""
    if isinstance(entries, Mapping):
        return {k: interpolated(v) for k, v in entries.items() if v is not None}
    environment = {}
    for entry in entries or []:
        if isinstance(entry, Mapping) and "value" in entry:
            environment[entry["name"]] = interpolated(entry["value"])
        elif isinstance(entry, str) and "=" in entry:
            name, _, value = entry.partition("=")
            environment[name] = interpolated(value)
    return environment


# --- the sources ---------------------------------------------------------------------------


def budgets_from_settings_defaults() -> Iterator[Budget]:
    budget = settings_with({})
    yield Budget(**{**budget.__dict__, "source": "app/settings.py defaults"})


def budgets_from_gunicorn_conf() -> Iterator[Budget]:
    """gunicorn.conf.py as Gunicorn loads it, with none of the variables exported (in a
    process of its own: it must run before anything imports prometheus_client)."""
    env = {k: v for k, v in os.environ.items() if k not in SHUTDOWN_VARIABLES}
    read = "import runpy; print(runpy.run_path('gunicorn.conf.py')['graceful_timeout'])"
    result = run(
        [sys.executable, "-c", read],
        env=env,
        check=True,
        timeout=60,
    )
    budget = settings_with({})
    yield Budget(
        **{
            **budget.__dict__,
            "source": "gunicorn.conf.py",
            "graceful_timeout": float(result.stdout.split()[-1]),
        }
    )


def budgets_from_compose() -> Iterator[Budget]:
    """Every compose service whose command runs Gunicorn (or that sets our variables)."""
    for path in sorted(REPO_ROOT.glob("compose*.y*ml")) + sorted(
        REPO_ROOT.glob("docker-compose*.y*ml")
    ):
        services = (yaml.safe_load(path.read_text()) or {}).get("services", {})
        for name, service in services.items():
            environment = as_environment(service.get("environment"))
            command = " ".join(map(str, service.get("command") or []))
            if not (set(SHUTDOWN_VARIABLES) & environment.keys() or "gunicorn" in command):
                continue
            budget = settings_with(environment)
            grace = seconds(service.get("stop_grace_period", "10s"))  # compose's default
            yield Budget(
                **{**budget.__dict__, "source": f"{path.name}: {name}", "outer_grace": grace}
            )


def budgets_from_k8s() -> Iterator[Budget]:
    """Every pod template under k8s/ with a container that sets our variables, through
    `env` or `envFrom` a ConfigMap (a manifest, or a kustomize configMapGenerator)."""
    documents = [
        (path, document)
        for path in sorted((REPO_ROOT / "k8s").rglob("*.y*ml"))
        for document in yaml.safe_load_all(path.read_text())
        if isinstance(document, dict)
    ]
    config_maps = config_maps_in(document for _, document in documents)
    for path, document in documents:
        pod = pod_spec(document)
        if pod is None:
            continue
        for container in pod.get("containers", []):
            environment: dict[str, str] = {}
            for source in container.get("envFrom", []):
                name = source.get("configMapRef", {}).get("name")
                environment.update(config_maps.get(name, {}))
            environment.update(as_environment(container.get("env")))
            if not set(SHUTDOWN_VARIABLES) & environment.keys():
                continue
            budget = settings_with(environment)
            name = f"{path.relative_to(REPO_ROOT)}: {document['metadata']['name']}"
            yield Budget(
                **{
                    **budget.__dict__,
                    "source": name,
                    "outer_grace": float(pod.get("terminationGracePeriodSeconds", 30)),
                    "pre_stop_sleep": pre_stop_sleep(container),
                }
            )


def config_maps_in(documents: Iterable[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """ConfigMap name -> data, from ConfigMap manifests and kustomize generators."""
    found: dict[str, dict[str, str]] = {}
    for document in documents:
        if document.get("kind") == "ConfigMap":
            found[document["metadata"]["name"]] = {
                k: str(v) for k, v in (document.get("data") or {}).items()
            }
        for generator in document.get("configMapGenerator", []):
            found.setdefault(generator["name"], {}).update(
                as_environment(generator.get("literals", []))
            )
    return found


def pod_spec(document: Any) -> dict[str, Any] | None:
    if not isinstance(document, dict):
        return None
    spec = document.get("spec", {})
    if document.get("kind") == "Pod":
        return spec
    template: dict[str, Any] | None = spec.get("template", {}).get("spec")  # Deployment & co
    return template


def pre_stop_sleep(container: Mapping[str, Any]) -> float:
    """`preStop: {sleep: {seconds: N}}` or `preStop: {exec: {command: [sleep, N]}}`."""
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = " ".join(map(str, pre_stop.get("exec", {}).get("command", [])))
    match = re.search(r"\bsleep\s+(\d+(?:\.\d+)?)", command)
    return float(match.group(1)) if match else 0.0


SOURCES: list[Callable[[], Iterator[Budget]]] = [
    budgets_from_settings_defaults,
    budgets_from_gunicorn_conf,
    budgets_from_compose,
    budgets_from_k8s,
]
BUDGETS = [budget for source in SOURCES for budget in source()]


# --- the checks ------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", BUDGETS, ids=[b.source for b in BUDGETS])
def test_shutdown_finishes_before_anything_kills_it(budget: Budget) -> None:
    """1. delay + drain + cut-off grace + lifespan < graceful_timeout: else the master
    SIGKILLs a worker mid-drain and its queued spans are never flushed.
    2. preStop sleep + graceful_timeout < stop_grace_period / terminationGracePeriodSeconds:
    the orchestrator's clock starts before the preStop hook, Gunicorn's at SIGTERM."""
    assert budget.worker_shutdown < budget.graceful_timeout, budget
    if budget.outer_grace is not None:
        assert budget.pre_stop_sleep + budget.graceful_timeout < budget.outer_grace, budget


def test_the_budget_is_checked_in_every_place_that_sets_it() -> None:
    """Settings defaults and gunicorn.conf.py always; compose.yaml and k8s/ once they
    exist (a file that sets the variables but is not found here would go unchecked)."""
    sources = {b.source.split(":")[0] for b in BUDGETS}
    assert {"app/settings.py defaults", "gunicorn.conf.py"} <= sources
    if (REPO_ROOT / "compose.yaml").exists():
        assert "compose.yaml" in sources
    if (REPO_ROOT / "k8s").is_dir():
        assert any(source.startswith("k8s/") for source in sources)


def test_settings_refuse_a_budget_that_overruns_graceful_timeout() -> None:
    """20 s drain + 0.5 + 3 s lifespan + a 10 s delay overruns a 30 s graceful_timeout."""
    with pytest.raises(ValueError, match="must stay below GUNICORN_GRACEFUL_TIMEOUT"):
        Settings(SHUTDOWN_DELAY_SECONDS=10, GUNICORN_GRACEFUL_TIMEOUT=30)


@pytest.mark.parametrize(
    ("text", "expected"), [("40s", 40), ("1m30s", 90), ("45", 45), (45, 45), ("500ms", 0.5)]
)
def test_durations_parse_like_compose(text: Any, expected: float) -> None:
    assert seconds(text) == expected


def test_compose_defaults_are_what_runs_unexported() -> None:
    assert as_environment({"SHUTDOWN_DELAY_SECONDS": "${SHUTDOWN_DELAY_SECONDS:-5}"}) == {
        "SHUTDOWN_DELAY_SECONDS": "5"
    }
    assert as_environment(["GUNICORN_GRACEFUL_TIMEOUT=30"]) == {"GUNICORN_GRACEFUL_TIMEOUT": "30"}
    assert as_environment([{"name": "SHUTDOWN_DELAY_SECONDS", "value": "5"}]) == {
        "SHUTDOWN_DELAY_SECONDS": "5"
    }


# The numbers compose and Kubernetes use (the brief's contract, docs/shutdown.md): the
# inequality above keeps them safe, this keeps them what the docs say.
DEPLOYED = {"delay": 5.0, "drain": 20.0, "lifespan": 3.0, "graceful_timeout": 30.0}


@pytest.mark.parametrize(
    ("prefix", "outer_grace", "pre_stop_sleep"),
    [("compose.yaml: api", 40.0, 0.0), ("k8s/deployment.yaml: parity-api", 45.0, 5.0)],
)
def test_compose_and_k8s_use_the_documented_numbers(
    prefix: str, outer_grace: float, pre_stop_sleep: float
) -> None:
    """compose: SHUTDOWN_DELAY_SECONDS 5, drain 20, graceful 30, stop_grace_period 40 s.
    k8s: the same, plus preStop sleep 5 and terminationGracePeriodSeconds 45."""
    (budget,) = [b for b in BUDGETS if b.source == prefix]
    assert {key: getattr(budget, key) for key in DEPLOYED} == DEPLOYED
    assert (budget.outer_grace, budget.pre_stop_sleep) == (outer_grace, pre_stop_sleep)


# --- the load balancer in front of the compose replicas ------------------------------------

HAPROXY_CONFIG = REPO_ROOT / "docker" / "haproxy" / "haproxy.cfg"


def haproxy_seconds(value: str) -> float:
    """HAProxy durations: `500ms`, `1s`, `2m`; a bare number is milliseconds."""
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    if not match:
        raise ValueError(f"not an HAProxy duration: {value!r}")
    unit = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(match.group(1)) * unit[match.group(2)]


def haproxy_settings() -> dict[str, str]:
    """The keywords the budget depends on, from haproxy.cfg: `timeout <name>` lines as
    `timeout <name>`, `hard-stop-after`, and default-server's `inter`, `fastinter`, `fall`."""
    found: dict[str, str] = {}
    for line in HAPROXY_CONFIG.read_text().splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["timeout"] and len(words) == 3:
            found[f"timeout {words[1]}"] = words[2]
        elif words[:1] == ["hard-stop-after"]:
            found["hard-stop-after"] = words[1]
        elif words[:1] == ["default-server"]:
            options = words[1:]
            for name in ("inter", "fastinter", "fall", "rise"):
                if name in options:
                    found[name] = options[options.index(name) + 1]
    return found


def compose_api_budget() -> Budget:
    (budget,) = [b for b in BUDGETS if b.source == "compose.yaml: api"]
    return budget


def test_the_proxy_takes_a_draining_replica_out_while_it_still_serves() -> None:
    """After SIGTERM a replica answers /ready 503 at once (no cached result) and keeps
    serving for SHUTDOWN_DELAY_SECONDS. The first failing check comes within `inter`,
    the next ones every `fastinter`, each waiting up to `timeout check`: the replica is
    out of the pool before it closes its listener, so no new request is sent there."""
    proxy = haproxy_settings()
    inter, fastinter = haproxy_seconds(proxy["inter"]), haproxy_seconds(proxy["fastinter"])
    detection = (
        inter + (int(proxy["fall"]) - 1) * fastinter + haproxy_seconds(proxy["timeout check"])
    )
    assert detection < compose_api_budget().delay, (detection, proxy)


def test_the_proxy_never_cuts_a_request_the_replica_still_drains() -> None:
    """A request accepted just before the listener closes may run for the whole drain."""
    proxy = haproxy_settings()
    assert compose_api_budget().drain < haproxy_seconds(proxy["timeout server"]), proxy


def test_the_proxy_stops_by_itself_before_docker_kills_it() -> None:
    """`docker compose stop lb` sends SIGUSR1 (a soft stop); hard-stop-after ends what is
    left before stop_grace_period runs out and Docker sends SIGKILL."""
    with (REPO_ROOT / "compose.yaml").open() as file:
        lb = yaml.safe_load(file)["services"]["lb"]
    hard_stop = haproxy_seconds(haproxy_settings()["hard-stop-after"])
    assert hard_stop < seconds(lb["stop_grace_period"])


@pytest.mark.parametrize(
    ("text", "expected"), [("500ms", 0.5), ("1s", 1), ("25s", 25), ("300", 0.3)]
)
def test_haproxy_durations_parse_like_haproxy(text: str, expected: float) -> None:
    assert haproxy_seconds(text) == expected
