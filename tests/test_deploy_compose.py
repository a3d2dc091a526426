"""compose.yaml: validated by the Compose specification's JSON schema and by the real
Compose CLI, then checked for what neither knows about (every mounted file exists, every
waited-on service has a health check, images pinned, ports on 127.0.0.1 only, the api
hardened, the shutdown budget, .env.example = the built-in fallbacks)."""

from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from app.settings import Settings
from parity.harness.repo import REPO_ROOT
from tests.deploy_tools import compose_cli, require, run_tool

COMPOSE_FILE = REPO_ROOT / "compose.yaml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
MULTIPROC_DIR = "/run/parity/metrics"  # the Dockerfile's PROMETHEUS_MULTIPROC_DIR
# `${NAME}` or `${NAME:-default}` (compose's interpolation; `$$` is a literal dollar).
INTERPOLATION = re.compile(r"(?<!\$)\$\{(\w+)(?::-([^}]*))?\}")
# An exact version: at least MAJOR.MINOR, optionally a variant suffix (-alpine, -musl).
EXACT_TAG = re.compile(r"v?\d+\.\d+(\.\d+)*(-[\w.-]+)?")


@functools.cache
def compose() -> dict[str, Any]:
    """compose.yaml as written (PyYAML resolves the anchors and `<<` merges)."""
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def one_shots() -> set[str]:
    """Services others wait for with `service_completed_successfully`."""
    return {
        name
        for service in services().values()
        for name, condition in _depends_on(service).items()
        if condition == "service_completed_successfully"
    }


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on", {})
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def with_defaults(value: str) -> str:
    """`value` as compose resolves it when no variable is set: each `${NAME:-default}`
    replaced by its default."""
    return INTERPOLATION.sub(lambda match: match[2] or "", value)


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(
        float(number) * units[unit] for number, unit in re.findall(r"([\d.]+)(ms|s|m|h)", duration)
    )


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


# --- the real tools ------------------------------------------------------------------


def test_compose_spec_json_schema() -> None:
    """check-jsonschema with the Compose specification's schema (vendored in the tool)."""
    check = require("check-jsonschema", "`make venv` installs it")
    result = run_tool([check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def clean_env() -> dict[str, str]:
    """No variable of the caller's shell may leak into compose's interpolation."""
    return {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}


def resolved_model(env_file: Path) -> Any:
    """The model the Compose CLI resolves (interpolated, merged, defaults filled in)."""
    command = [*compose_cli(), "-f", str(COMPOSE_FILE), "--profile", "*"]
    result = run_tool(
        [*command, "--env-file", str(env_file), "config", "--format", "json"], env=clean_env()
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_compose_cli_accepts_every_profile() -> None:
    """`docker-compose -f compose.yaml --profile '*' config -q`: the real parser and
    model (what `docker compose up` runs first) accept every service of every profile."""
    result = run_tool(
        [*compose_cli(), "-f", str(COMPOSE_FILE), "--profile", "*", "config", "--quiet"],
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # no warning either (unset variable, obsolete key)


def test_without_a_dotenv_the_stack_gets_the_example_values(tmp_path: Path) -> None:
    """`docker compose up` in a fresh clone (no .env) configures exactly what
    .env.example says: the two models the CLI resolves are identical."""
    empty = tmp_path / "empty.env"
    empty.write_text("")
    assert resolved_model(empty) == resolved_model(ENV_EXAMPLE)


# --- what the schema cannot know ---------------------------------------------------


def test_every_interpolated_variable_has_a_default_documented_in_env_example() -> None:
    """Each `${VAR:-default}` has its default (empty only when written `${VAR:-}`), and
    .env.example lists VAR with the same value; .env.example lists nothing compose does
    not use."""
    used: dict[str, set[str | None]] = {}
    lines = COMPOSE_FILE.read_text().splitlines()
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for match in INTERPOLATION.finditer(code):  # group 2: None without `:-`
        used.setdefault(match[1], set()).add(match[2])
    example = env_example()
    assert set(used) == set(example)
    for name, defaults in used.items():
        assert defaults == {example[name]}, f"{name}: defaults {defaults} vs {example[name]!r}"


def test_every_file_mounted_or_built_from_the_repository_exists() -> None:
    missing = []
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")) and not (REPO_ROOT / source).exists():
                missing.append(f"{name}: {source}")
        if build := service.get("build"):
            build = {"context": build} if isinstance(build, str) else build
            dockerfile = (
                REPO_ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
            )
            if not dockerfile.is_file():
                missing.append(f"{name}: {dockerfile.relative_to(REPO_ROOT)}")
        for env_file in service.get("env_file", []):
            spec = {"path": env_file} if isinstance(env_file, str) else env_file
            if spec.get("required", True) and not (REPO_ROOT / spec["path"]).exists():
                missing.append(f"{name}: env_file {spec['path']}")
    assert not missing


def test_waited_on_services_have_health_checks_and_one_shots_finish() -> None:
    for name, service in services().items():
        for dependency, condition in _depends_on(service).items():
            target = services()[dependency]
            if condition == "service_healthy":
                assert "test" in target.get("healthcheck", {}), f"{name} waits for {dependency}"
            if condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", dependency
                assert "command" in target, dependency


def test_every_one_shot_is_awaited_by_a_long_running_service() -> None:
    """`docker compose up --wait` (make up) fails on a one-shot's clean exit unless a
    long-running service waits for it with service_completed_successfully
    (docker/compose#10596)."""
    long_running = {name: s for name, s in services().items() if name not in one_shots()}
    for one_shot in one_shots():
        awaited_by = [
            name
            for name, service in long_running.items()
            if _depends_on(service).get(one_shot) == "service_completed_successfully"
        ]
        assert awaited_by, f"{one_shot} is awaited by no long-running service"


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in services().items():
        if name in one_shots():
            continue
        healthcheck = service.get("healthcheck", {})
        assert healthcheck.get("test"), f"{name} has no health check"
        assert not healthcheck.get("disable"), name
        assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name


def test_every_image_is_pinned_to_an_exact_version() -> None:
    """No `latest`, no bare major (`postgres:18`): a tag names one release. Images built
    here (`build:`) are checked through their Dockerfile's FROM instead."""
    for name, service in services().items():
        image = with_defaults(service.get("image", ""))
        if "build" in service:
            assert image.endswith(":local"), f"{name}: built images are tagged :local"
            for base in service["build"].get("args", {}).values():
                assert EXACT_TAG.fullmatch(with_defaults(base).rpartition(":")[2]), base
            continue
        repository, _, tag = image.rpartition(":")
        assert repository, f"{name}: {image} has no tag"
        assert EXACT_TAG.fullmatch(tag), f"{name}: {image} is not an exact version"


def test_published_ports_listen_on_loopback_only() -> None:
    for name, service in services().items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: use the 127.0.0.1:HOST:CONTAINER form"
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is reachable from the network"
            assert with_defaults(port).count(":") == 2, f"{name}: {port}"


def test_api_is_hardened() -> None:
    api = services()["api"]
    assert api["read_only"] is True
    assert api["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in api["security_opt"]
    assert "memory" in api["deploy"]["resources"]["limits"]
    assert api_cpus() > 0
    tmpfs_paths = [entry.split(":")[0] for entry in api["tmpfs"]]
    assert MULTIPROC_DIR in tmpfs_paths
    assert "/tmp" in tmpfs_paths


def api_cpus() -> float:
    """The api's CPU limit: its CFS quota over the period (no `cpus:`, which the daemon
    refuses on a host with fewer CPUs than that)."""
    api = services()["api"]
    assert "cpus" not in api["deploy"]["resources"]["limits"]
    return int(with_defaults(str(api["cpu_quota"]))) / int(api["cpu_period"])


def test_workers_match_the_cpu_limit() -> None:
    api = services()["api"]
    (default,) = [d for n, d in INTERPOLATION.findall(api["environment"]["GUNICORN_WORKERS"])]
    assert int(default) == math.ceil(api_cpus()) == 2


def test_api_waits_for_its_dependencies_and_the_seed() -> None:
    depends = _depends_on(services()["api"])
    assert depends["postgres"] == "service_healthy"
    assert depends["redis"] == "service_healthy"
    assert depends["seed"] == "service_completed_successfully"
    assert _depends_on(services()["seed"])["migrate"] == "service_completed_successfully"


def test_readme_lists_every_published_port() -> None:
    """The README's URL table is how a new user finds each service: every port compose
    publishes must be in it."""
    readme = (REPO_ROOT / "README.md").read_text()
    for name, service in services().items():
        for port in service.get("ports", []):
            host_port = with_defaults(port).split(":")[1]
            assert f"127.0.0.1:{host_port}" in readme, f"{name}: {port} missing from README"


def test_scripts_drive_the_services_compose_defines() -> None:
    """The --compose modes of the scripts name services and users that exist here."""
    from parity.commands.tune import parse_args
    from parity.harness.stack import ComposeStack

    assert ComposeStack.service in services()
    args = parse_args(["--compose"])
    database = services()[args.compose_db_service]
    assert database["environment"]["POSTGRES_USER"] == args.compose_db_user


def test_locust_loads_the_api_and_is_scraped() -> None:
    """Profile `loadtest`: its web UI on 127.0.0.1:8089, the load balancer as host (as
    clients reach the api), and the metrics port Prometheus' `locust` job scrapes."""
    locust = services()["locust"]
    assert locust["profiles"] == ["loadtest"]
    assert "--host=http://lb:8000" in locust["command"]
    prometheus = yaml.safe_load((REPO_ROOT / "observability/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prometheus["scrape_configs"] if j["job_name"] == "locust"]
    assert f"--prometheus-port={job['dns_sd_configs'][0]['port']}" in locust["command"]


def test_every_variable_given_to_the_app_is_a_setting() -> None:
    """Field name = variable name (app/settings.py): a misspelt variable would be
    ignored silently (`extra="ignore"`), so each one compose sets for the app must be a
    setting, or read by the OpenTelemetry SDK (OTEL_*) or prometheus_client."""
    known = set(Settings.model_fields) | {"PROMETHEUS_MULTIPROC_DIR"}
    for name in ("api", "migrate", "seed"):
        for variable in services()[name]["environment"]:
            assert variable in known or variable.startswith("OTEL_"), f"{name}: {variable}"


# --- compose.offline.yaml: the registry-free, lighter variant ---------------------------

OFFLINE_FILE = REPO_ROOT / "compose.offline.yaml"


def offline_model(tmp_path: Path) -> Any:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    command = [*compose_cli(), "-f", str(COMPOSE_FILE), "-f", str(OFFLINE_FILE)]
    result = run_tool(
        [*command, "--env-file", str(empty), "config", "--format", "json"], env=clean_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    return json.loads(result.stdout)


def test_the_offline_variant_runs_lb_api_postgres_redis_prometheus_on_local_images(
    tmp_path: Path,
) -> None:
    """Without a profile it starts what can be built here from Debian packages; every
    image is a local stand-in (parity-offline/...) or built from our Dockerfiles FROM
    one; the collector, Jaeger and Grafana are not faked but left to a profile."""
    model = offline_model(tmp_path)
    assert set(model["services"]) == {
        "postgres", "redis", "migrate", "seed", "api", "prometheus", "lb"
    }  # fmt: skip
    for name, service in model["services"].items():
        if "build" in service:
            assert service["build"]["args"]["PYTHON_IMAGE"].startswith("parity-offline/"), name
        else:
            assert service["image"].startswith("parity-offline/"), name
    assert model["services"]["api"]["depends_on"]["otel-collector"]["required"] is False
    for name in ("otel-collector", "jaeger", "grafana"):
        assert name in offline_services_in_profile(tmp_path), name


def offline_services_in_profile(tmp_path: Path) -> set[str]:
    command = [*compose_cli(), "-f", str(COMPOSE_FILE), "-f", str(OFFLINE_FILE)]
    result = run_tool([*command, "--profile", "observability", "config", "--services"],
                      env=clean_env())  # fmt: skip
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_the_offline_images_are_the_ones_the_kit_builds() -> None:
    """compose.offline.yaml names exactly the images parity images makes."""
    from parity.harness.images import IMAGES

    text = OFFLINE_FILE.read_text()
    named = set(re.findall(r"(parity-offline/[\w.-]+:[\w.-]+)", text))
    assert named <= set(IMAGES), named - set(IMAGES)


def test_the_default_database_and_grafana_passwords_differ() -> None:
    """One leaked default must not open both (issue 18): distinct committed values."""
    example = env_example()
    assert example["POSTGRES_PASSWORD"] != example["GRAFANA_ADMIN_PASSWORD"]
