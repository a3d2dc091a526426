"""The observability/ configuration, checked without the service running: the dashboards
are what the generator produces, structurally valid and linked to provisioned
datasources; the collector config is internally consistent; Prometheus accepts the
config and rules (promtool), the rule unit tests pass, and every PromQL expression
parses in a real Prometheus."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import yaml

from parity.commands import dashboards as grafana_dashboards
from parity.commands.dashboards import stale_files
from parity.commands.verify_dashboards import (
    NATIVE_DROPPED,
    NATIVE_DROPPED_JOBS,
    OPTIONAL_JOBS,
    check_all,
    rule_problems,
    unavailable_jobs,
    verify_jobs,
)
from parity.dashboards import DASHBOARD_DIR, render_all
from parity.harness.prometheus_native import (
    PROMETHEUS_CONFIG,
    PROMETHEUS_DIR,
    NativePrometheus,
    binaries,
    missing_reason,
    native_config,
    promtool,
)
from parity.harness.promql_inventory import (
    DATASOURCES_FILE,
    Expression,
    GrafanaContext,
    alert_signals,
    dashboard_files,
    inventory,
    iter_panels,
    metric_names,
    required_jobs,
    rule_files,
    source_metrics,
    substitute,
    variable_values,
)
from parity.harness.repo import REPO_ROOT
from parity.harness.stack import StackError, free_port

OBSERVABILITY = REPO_ROOT / "observability"
COLLECTOR_CONFIG = OBSERVABILITY / "otel-collector" / "config.yaml"
JAEGER_CONFIG = OBSERVABILITY / "jaeger" / "config.yaml"
DASHBOARD_PROVIDER = OBSERVABILITY / "grafana" / "provisioning" / "dashboards" / "dashboards.yaml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DOCS = REPO_ROOT / "docs" / "observability.md"
HAPROXY_CONFIG = REPO_ROOT / "docker" / "haproxy" / "haproxy.cfg"
LB_DASHBOARD = "load-balancer.json"

# Every HAProxy exporter metric the dashboards may use: names that both HAProxy 2.6
# (Debian 12's 2.6.12, the offline stand-in CI runs: read from its /metrics) and 3.2
# (the image compose.yaml pins: addons/promex and src/stats-proxy.c of v3.2.0) export
# for the object the name says (frontend, backend, server), with the same labels
# (proxy, server, state, code). A name only one of them has (3.x's
# haproxy_server_http_requests_total, ...) is not here: count responses instead.
HAPROXY_METRICS = frozenset(
    {
        "haproxy_backend_active_servers",
        "haproxy_backend_backup_servers",
        "haproxy_backend_check_up_down_total",
        "haproxy_backend_connection_errors_total",
        "haproxy_backend_current_queue",
        "haproxy_backend_current_sessions",
        "haproxy_backend_http_responses_total",
        "haproxy_backend_redispatch_warnings_total",
        "haproxy_backend_response_errors_total",
        "haproxy_backend_retry_warnings_total",
        "haproxy_frontend_http_requests_total",
        "haproxy_frontend_http_responses_total",
        "haproxy_server_check_code",
        "haproxy_server_check_duration_seconds",
        "haproxy_server_check_failures_total",
        "haproxy_server_check_status",
        "haproxy_server_check_up_down_total",
        "haproxy_server_current_queue",
        "haproxy_server_http_responses_total",
        "haproxy_server_status",
    }
)

needs_prometheus = pytest.mark.skipif(binaries() is None, reason=missing_reason())


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in dashboard_files()}


def provisioned_datasources() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in load_yaml(DATASOURCES_FILE)["datasources"]}


# --- Dashboards --------------------------------------------------------------------------


def test_committed_dashboards_are_what_the_generator_produces() -> None:
    """`make dashboards` output == the committed JSON, and no stray JSON file exists."""
    rendered = render_all()
    assert stale_files(DASHBOARD_DIR, rendered) == {}, "run `make dashboards` and commit"
    assert {p.name for p in dashboard_files()} == set(rendered)


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_is_a_valid_json_model(name: str) -> None:
    """uid, title, schemaVersion; every panel has a type, a unique id and a grid position
    inside the 24-column grid; panels do not overlap; refIds are unique per panel."""
    model = dashboards()[name]
    assert re.fullmatch(r"[a-z0-9-]{1,40}", model["uid"])
    assert model["title"]
    assert isinstance(model["schemaVersion"], int)
    panels = list(iter_panels(model))
    ids = Counter(panel["id"] for panel in panels)
    assert all(isinstance(i, int) and i > 0 for i in ids), ids
    assert [i for i, n in ids.items() if n > 1] == [], "duplicate panel ids"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        assert panel["type"] in {
            "row",
            "timeseries",
            "stat",
            "heatmap",
            "table",
            "text",
            "state-timeline",
        }
        grid = panel["gridPos"]
        assert grid["w"] >= 1
        assert grid["h"] >= 1
        assert grid["x"] >= 0
        assert grid["x"] + grid["w"] <= 24
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['id']} overlaps {cells[x, y]}"
                cells[x, y] = panel["id"]
        ref_ids = [t.get("refId") for t in panel.get("targets", [])]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert all(ref_ids), panel["title"]


def test_dashboard_uids_are_unique() -> None:
    uids = [model["uid"] for model in dashboards().values()]
    assert len(uids) == len(set(uids))


def datasource_refs(node: Any) -> list[dict[str, Any]]:
    """Every {"type", "uid"} datasource reference and internal link target in a model."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("datasource"), dict):
            found.append(node["datasource"])
        if "datasourceUid" in node:
            found.append({"uid": node["datasourceUid"]})
        for value in node.values():
            found += datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            found += datasource_refs(value)
    return found


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_datasources_exist_in_provisioning(name: str) -> None:
    """Every datasource a panel, target, variable or link uses is provisioned, with the
    same type: a dashboard never shows "datasource not found"."""
    provisioned = provisioned_datasources()
    refs = datasource_refs(dashboards()[name])
    assert refs
    for ref in refs:
        assert ref["uid"] in provisioned, ref
        if "type" in ref:
            assert ref["type"] == provisioned[ref["uid"]]["type"], ref


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_dashboard_variables_are_defined_and_multi_values_use_regex(name: str) -> None:
    """Every $variable in a query or link is a dashboard variable or a Grafana builtin;
    multi-value variables only appear after =~ or !~ (with "All" selected, Grafana puts
    a regex there)."""
    model = dashboards()[name]
    known = {
        **variable_values(model),
        **GrafanaContext().builtins(),
        **dict.fromkeys(("__from", "__to", "__field", "__value"), ""),
    }
    text = json.dumps(model)
    for match in re.finditer(r"\$\{?(\w+)", text):
        assert match.group(1) in known or match.group(1).startswith("__"), match.group(0)
    multi = [v["name"] for v in model["templating"].get("list", []) if v.get("multi")]
    for name_ in multi:
        assert not re.search(rf'[^=!~]=\s*\\?"\${{?{name_}\b', text), f"${name_} used with ="


# The load balancer's dashboard has no API series (HAProxy's own metrics; no route, no
# histogram, no trace of its own): nothing to link to traces.
@pytest.mark.parametrize("name", sorted(set(dashboards()) - {LB_DASHBOARD}))
def test_per_route_and_latency_panels_link_to_their_traces(name: str) -> None:
    """Every panel that splits by route or shows a latency percentile offers links to
    the traces behind a series: Explore on the Jaeger datasource and Jaeger's UI."""
    checked = 0
    for panel in iter_panels(dashboards()[name]):
        exprs = " ".join(t.get("expr", "") for t in panel.get("targets", []))
        groups = " ".join(re.findall(r"by \(([^)]*)\)", exprs))
        if "http_route" not in groups and "histogram_quantile" not in exprs:
            continue
        links = panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
        internal = [link["internal"] for link in links if "internal" in link]
        external = [link["url"] for link in links if link.get("url")]
        assert internal, panel["title"]
        assert internal[0]["datasourceUid"] == "jaeger"
        assert internal[0]["query"]["queryType"] == "search"
        assert internal[0]["query"]["service"] == "${service}"
        assert external, panel["title"]
        assert external[0].startswith("${jaeger_url:raw}/search?")
        checked += 1
    assert checked >= 2


def test_alert_annotations_point_at_existing_dashboards() -> None:
    uids = {model["uid"] for model in dashboards().values()}
    for path in rule_files():
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                link = rule.get("annotations", {}).get("dashboard")
                if link:
                    assert link.removeprefix("/d/") in uids, (rule["alert"], link)


# --- Grafana provisioning ----------------------------------------------------------------


def test_datasources_have_fixed_uids_and_match_the_scrape_interval() -> None:
    """uids prometheus and jaeger; Prometheus' timeInterval = the scrape interval, so
    Grafana's $__rate_interval covers four scrapes."""
    provisioned = provisioned_datasources()
    assert provisioned["prometheus"]["type"] == "prometheus"
    assert provisioned["jaeger"]["type"] == "jaeger"
    scrape = load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert provisioned["prometheus"]["jsonData"]["timeInterval"] == scrape


def test_dashboard_provider_loads_the_dashboard_directory() -> None:
    provider = load_yaml(DASHBOARD_PROVIDER)["providers"][0]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert provider["allowUiUpdates"] is False


# --- OpenTelemetry Collector (and Jaeger, which is one) ----------------------------------


def pipeline_problems(config: dict[str, Any]) -> list[str]:
    """Components a pipeline uses but the config does not define, defined components no
    pipeline uses, connectors not used on both ends, undefined extensions."""
    problems = []
    used: dict[str, set[str]] = {kind: set() for kind in ("receivers", "processors", "exporters")}
    for name, pipeline in config["service"]["pipelines"].items():
        for kind in used:
            for component in pipeline.get(kind, []):
                used[kind].add(component)
                defined = set(config.get(kind) or {}) | set(config.get("connectors") or {})
                if kind == "processors":
                    defined = set(config.get("processors") or {})
                if component not in defined:
                    problems.append(f"pipeline {name}: {kind[:-1]} {component} is not defined")
        if not pipeline.get("receivers") or not pipeline.get("exporters"):
            problems.append(f"pipeline {name}: needs receivers and exporters")
    for kind in used:
        for component in set(config.get(kind) or {}) - used[kind]:
            problems.append(f"{kind[:-1]} {component} is defined but no pipeline uses it")
    for connector in config.get("connectors") or {}:
        if connector not in used["exporters"] or connector not in used["receivers"]:
            problems.append(f"connector {connector} must be an exporter and a receiver")
    for extension in config["service"].get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            problems.append(f"extension {extension} is not defined")
    return problems


@pytest.mark.parametrize("path", [COLLECTOR_CONFIG, JAEGER_CONFIG], ids=["collector", "jaeger"])
def test_every_pipeline_component_is_defined_and_used(path: Path) -> None:
    assert pipeline_problems(load_yaml(path)) == []


def test_pipeline_problems_are_found() -> None:
    """The checker itself: a typo'd exporter and an unused processor are reported."""
    config = load_yaml(COLLECTOR_CONFIG)
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlp_grpc/jaegr", "spanmetrics"]
    config["processors"]["unused"] = {}
    problems = pipeline_problems(config)
    assert "pipeline traces: exporter otlp_grpc/jaegr is not defined" in problems
    assert "processor unused is defined but no pipeline uses it" in problems


def test_collector_limits_memory_first_and_batches_in_every_pipeline() -> None:
    """memory_limiter is the first processor (it must refuse data before anything else
    holds it) and batch the last, in every pipeline."""
    config = load_yaml(COLLECTOR_CONFIG)
    for name, pipeline in config["service"]["pipelines"].items():
        processors = pipeline.get("processors", [])
        assert processors[:1] == ["memory_limiter"], name
        assert processors[-1:] == ["batch"], name


def test_collector_traces_go_to_jaeger_over_otlp_and_own_metrics_are_exposed() -> None:
    config = load_yaml(COLLECTOR_CONFIG)
    receivers = config["receivers"]["otlp"]["protocols"]
    assert {"grpc", "http"} <= set(receivers)
    traces = config["service"]["pipelines"]["traces"]
    jaeger = [e for e in traces["exporters"] if e.split("/")[0] == "otlp_grpc"]
    assert jaeger
    assert "jaeger" in config["exporters"][jaeger[0]]["endpoint"]
    reader = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    scraped = {
        t
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        for t in (job.get("static_configs") or [{}])[0].get("targets", [])
    }
    assert f"otel-collector:{reader['prometheus']['port']}" in scraped
    spanmetrics = config["exporters"]["prometheus/spanmetrics"]["endpoint"]
    assert f"otel-collector:{spanmetrics.rsplit(':', 1)[1].rstrip('}')}" in scraped


ENV_PLACEHOLDER = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


@pytest.mark.parametrize("path", [COLLECTOR_CONFIG, JAEGER_CONFIG], ids=["collector", "jaeger"])
def test_every_env_placeholder_is_documented(path: Path) -> None:
    """Each ${env:NAME} is explained in the file's header comment and in
    docs/observability.md, and has a default so the file works unconfigured."""
    text = path.read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    docs = DOCS.read_text()
    names = set(ENV_PLACEHOLDER.findall(text))
    assert names
    for name in names:
        assert name in header, f"{name} not in the header of {path.name}"
        assert f"`{name}`" in docs, f"{name} not documented in docs/observability.md"
    assert not re.search(r"\$\{env:\w+\}", text), "a placeholder without a default"


# --- Prometheus ----------------------------------------------------------------------------


@needs_prometheus
def test_promtool_accepts_the_config_and_the_rules() -> None:
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", *[str(p) for p in rule_files()])
    assert rules.returncode == 0, rules.stdout + rules.stderr


@needs_prometheus
def test_rule_unit_tests_pass() -> None:
    """promtool test rules observability/prometheus/tests/*.yml"""
    result = promtool("test", "rules", *[str(p) for p in RULE_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_fires_it_and_every_rule_file_is_tested() -> None:
    alerts = {
        rule["alert"]
        for path in rule_files()
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired, tested_files = set(), set()
    for path in RULE_TESTS:
        document = load_yaml(path)
        tested_files |= {(path.parent / f).resolve() for f in document["rule_files"]}
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    assert alerts - fired == set(), "alerts no unit test shows firing"
    assert {p.resolve() for p in rule_files()} <= tested_files


def test_native_config_keeps_jobs_and_rules_and_only_swaps_targets() -> None:
    config = native_config(
        {"api": ["127.0.0.1:1234"], "prometheus": ["127.0.0.1:9"]},
        interval=1.0,
        drop_jobs=NATIVE_DROPPED_JOBS,
    )
    original = load_yaml(PROMETHEUS_CONFIG)
    api = next(job for job in config["scrape_configs"] if job["job_name"] == "api")
    assert api["static_configs"] == [{"targets": ["127.0.0.1:1234"]}]
    assert "dns_sd_configs" not in api
    assert api["metrics_path"] == "/metrics"
    assert len(config["rule_files"]) == len(original["rule_files"])
    assert all(Path(pattern).is_absolute() for pattern in config["rule_files"])
    with pytest.raises(StackError, match="neither targeted nor dropped"):
        native_config({"api": ["127.0.0.1:1"]})


@needs_prometheus
def test_every_expression_is_valid_promql_for_a_real_prometheus() -> None:
    """Prometheus 2.42 parses and evaluates every dashboard, datasource and rule
    expression without error (data comes in test_observability_prometheus.py), and
    every rule's evaluation is healthy."""
    port = free_port()
    config = native_config(
        {"api": ["127.0.0.1:9"], "prometheus": [f"127.0.0.1:{port}"]},
        drop_jobs=NATIVE_DROPPED_JOBS,
    )
    with NativePrometheus(config, port=port) as prometheus:
        prometheus.wait_for_rule_evaluation(after=time.time())
        expressions = inventory(GrafanaContext(scrape_interval=1.0, step=1.0))
        checks = check_all(prometheus, expressions, time.time() - 10, time.time(), 1.0)
        errors = [f"{c.expression}: {c.detail}" for c in checks if c.status == "error"]
        assert errors == []
        assert rule_problems(prometheus) == []
    assert len(expressions) > 50


# --- The inventory itself ------------------------------------------------------------------


def test_alert_signals_drop_thresholds_split_set_operators_and_open_absent() -> None:
    assert alert_signals("a > 0.05 and b > 1") == ["a{}", "b{}"]
    assert alert_signals("0.9 < sum by (x) (c)") == ["sum by (x)(c{})"]
    assert alert_signals('absent(up{job="api"})') == ['up{job="api"}']
    assert alert_signals("a > bool 1") == ["a{} > bool 1"]
    assert alert_signals("a > b") == ["a{} > b{}"]


def test_grafana_rate_interval_and_unknown_variables() -> None:
    context = GrafanaContext(scrape_interval=15.0, step=5.0)
    assert context.builtins()["__rate_interval"] == "60000ms"
    assert GrafanaContext(scrape_interval=1.0, step=10.0).builtins()["__rate_interval"] == "11000ms"
    assert (
        substitute(
            'x{i=~"$instance"}[${__rate_interval}]', {"instance": ".+", "__rate_interval": "4s"}
        )
        == 'x{i=~".+"}[4s]'
    )
    with pytest.raises(ValueError, match=r"\$nope"):
        substitute("x[$nope]", {})


def test_source_metrics_follow_recording_rules() -> None:
    recorded = {"job:a:rate5m": "sum(rate(a_total[5m]))", "job:b": "job:a:rate5m / c"}
    assert source_metrics("job:b > 1", recorded) == {"a_total", "c"}


def test_required_jobs_are_the_job_equality_matchers_through_recording_rules() -> None:
    recorded = {"job:a:rate5m": 'sum(rate(a_total{job="api"}[5m]))'}
    assert required_jobs('x{job="lb", proxy="api"} / job:a:rate5m', recorded) == {"lb", "api"}
    assert required_jobs('up{job=~"lb|api"} or up{job!="x"}', recorded) == set()


# --- Scrape jobs an expression needs ---------------------------------------------------


class FakePrometheus:
    """query_range answers from a table (query -> series), anything else with `default`
    (no data); a query containing "broken" is a PromQL error. Every target was scraped
    3 times."""

    def __init__(
        self,
        data: dict[str, list[dict[str, Any]]],
        targets: list[Any] | None = None,
        default: list[dict[str, Any]] | None = None,
    ) -> None:
        self.data, self._targets, self.default = data, targets or [], default or []

    def query_range(self, expr: str, start: float, end: float, step: float) -> Any:
        if "broken" in expr:
            raise StackError("bad_data: parse error")
        return self.data.get(expr, self.default)

    def query(self, expr: str, at: float | None = None) -> Any:
        return [{"metric": {}, "value": [0, "3"]}] if "count_over_time(up" in expr else []

    def targets(self) -> list[Any]:
        return self._targets


def expression(query: str) -> Expression:
    return Expression("test", query, "panel", query, query)


def test_an_expression_of_a_job_not_scraped_here_is_skipped_with_the_reason() -> None:
    """No data + a job in `unavailable` -> skipped, with the job and why; no data for a
    job that is scraped -> failed; a PromQL error stays an error, whatever the job."""
    series = [{"metric": {}, "values": [[1, "2"]]}]
    api: Any = FakePrometheus({'up{job="lb"} == 1': series})
    checks = check_all(
        api,
        [
            expression('haproxy_backend_active_servers{job="lb"}'),
            expression('up{job="lb"} == 1'),
            expression('http_requests{job="api"}'),
            expression('broken{job="lb"}'),
        ],
        0,
        10,
        1,
        unavailable={"lb": "no proxy natively"},
    )
    assert [(c.status, c.detail) for c in checks] == [
        ("skipped", "job lb: no proxy natively"),
        ("ok", "1 series, 1 points"),
        ("no data", "0 series, none with a finite value"),
        ("error", "bad_data: parse error"),
    ]


def test_optional_jobs_are_unavailable_only_without_a_target_up() -> None:
    """compose.offline.yaml: the collector's targets are down, locust has none -> both
    unavailable, with what Prometheus says; the full stack: the collector is up ->
    checked."""
    offline: Any = FakePrometheus(
        {},
        [
            {"labels": {"job": "otel-collector"}, "health": "down", "lastError": "no such host"},
            {"labels": {"job": "spanmetrics"}, "health": "down", "lastError": "no such host"},
            {"labels": {"job": "lb"}, "health": "up"},
        ],
    )
    found = unavailable_jobs(offline)
    assert set(found) == {"otel-collector", "spanmetrics", "locust"}
    assert "no such host" in found["otel-collector"]
    assert "no target for it" in found["locust"]
    full: Any = FakePrometheus({}, [{"labels": {"job": "otel-collector"}, "health": "up"}])
    assert "otel-collector" not in unavailable_jobs(full)


def test_jobs_without_data_here_are_jobs_of_prometheus_yml_with_a_reason() -> None:
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert set(NATIVE_DROPPED) <= jobs
    assert set(OPTIONAL_JOBS) <= set(NATIVE_DROPPED)
    assert tuple(NATIVE_DROPPED) == NATIVE_DROPPED_JOBS
    assert all(NATIVE_DROPPED.values())
    assert all(OPTIONAL_JOBS.values())
    # The lb is part of every compose variant: its panels must have data there.
    assert "lb" in NATIVE_DROPPED
    assert "lb" not in OPTIONAL_JOBS


# --- The load balancer's panels --------------------------------------------------------


def lb_expressions() -> list[Expression]:
    return [
        e
        for e in inventory(GrafanaContext())
        if required_jobs(e.query, {}) & {"lb"} or "haproxy_" in e.query
    ]


def test_inventory_knows_every_lb_expression_and_that_it_needs_job_lb() -> None:
    """Every panel of the Load balancer dashboard is in the inventory (so verify_dashboards
    checks it), selects job lb in every selector, and only there: the API overview and
    the rules keep no lb dependency (natively they must all have data)."""
    found = lb_expressions()
    model = dashboards()[LB_DASHBOARD]
    targets = [t for p in iter_panels(model) for t in p.get("targets", []) if "expr" in t]
    assert len(targets) >= 15
    assert len(found) == len(targets)
    assert {e.source for e in found} == {f"observability/grafana/dashboards/{LB_DASHBOARD}"}
    for item in found:
        assert required_jobs(item.query, {}) == {"lb"}, item
        for selector in re.findall(r"haproxy_\w+\{[^}]*\}", item.query):
            assert selector.split("{")[1].startswith('job="lb", proxy'), (item, selector)


def test_only_job_lb_checks_just_the_lb_expressions_on_what_prometheus_holds() -> None:
    """`--only-job lb` (what the compose e2e runs): exactly the Load balancer dashboard's
    expressions; a job no expression selects, or an lb target down, is an error."""
    series = [{"metric": {}, "values": [[1, "1"]]}]
    lb_up = [{"labels": {"job": "lb"}, "health": "up", "scrapeUrl": "http://lb:8404/metrics"}]
    api: Any = FakePrometheus({}, lb_up, default=series)
    result = verify_jobs(api, ["lb"], context=GrafanaContext())
    assert result.ok
    assert [c.expression for c in result.checks] == lb_expressions()
    assert {c.status for c in result.checks} == {"ok"}
    with pytest.raises(StackError, match="selects job"):
        verify_jobs(api, ["nope"], context=GrafanaContext())
    lb_down: Any = FakePrometheus({}, [{**lb_up[0], "health": "down", "lastError": "no host"}])
    with pytest.raises(StackError, match="no host"):
        verify_jobs(lb_down, ["lb"], context=GrafanaContext())


def test_lb_panels_use_metrics_both_haproxy_versions_export() -> None:
    used = {
        name
        for e in lb_expressions()
        for name in metric_names(e.query)
        if name.startswith("haproxy_")
    }
    assert used
    assert used - HAPROXY_METRICS == set(), "not exported by both HAProxy 2.6 and 3.2"


def haproxy_sections() -> dict[str, str]:
    """'frontend api', 'backend api', ... of haproxy.cfg -> the section's text."""
    sections = re.split(r"^(?=\S)", HAPROXY_CONFIG.read_text(), flags=re.MULTILINE)
    return {
        section.split("\n", 1)[0].strip(): section
        for section in sections
        if section.startswith(("frontend ", "backend "))
    }


def test_lb_panels_name_the_proxies_of_haproxy_cfg() -> None:
    """The panels' `proxy` labels are haproxy.cfg's: `api` (the frontend, and the backend
    whose health-checked servers are the pool) and `api_panic` (the same replicas
    unchecked, used while none of `api` is up). A rename there must come with the
    dashboard's."""
    sections = haproxy_sections()
    assert "frontend api" in sections
    checked = r"^\s*server-template\s+api\s+\d+\s+\S+\s+check\b"
    assert re.search(checked, sections["backend api"], re.MULTILINE)
    assert "use_backend api_panic" in sections["frontend api"]
    assert "backend api_panic" in sections
    proxies: set[str] = set()
    for item in lb_expressions():
        for op, value in re.findall(r'proxy(=~?)"([^"]+)"', item.query):
            proxies |= set(value.split("|")) if op == "=~" else {value}
    assert proxies == {"api", "api_panic"}
    assert proxies <= {name.split()[1] for name in sections}


# --- Links and the generator CLI -----------------------------------------------------------


def grafana_interpolate(url: str, values: dict[str, str]) -> str:
    """What Grafana does to a URL data link: `${name:raw}` verbatim, every other
    variable URL-encoded (its default format for data links since Grafana 8.5)."""

    def replace(match: re.Match[str]) -> str:
        name, fmt = match.group(1), match.group(2)
        return values[name] if fmt == "raw" else quote(values[name], safe="")

    return re.sub(r"\$\{([\w.]+)(?::(\w+))?\}", replace, url)


def test_jaeger_ui_link_of_a_latency_series_is_a_valid_search() -> None:
    """Clicking p99 = 0.25 s on the route /api/v1/products/{product_id} opens Jaeger's
    search for that service and route, slower than 0.25 s, over the dashboard's range
    (Jaeger takes microseconds)."""
    model = dashboards()["api-overview.json"]
    panel = next(p for p in iter_panels(model) if p["title"] == "Latency p99 by route")
    link = next(lnk for lnk in panel["fieldConfig"]["defaults"]["links"] if lnk.get("url"))
    url = grafana_interpolate(
        link["url"],
        {
            "jaeger_url": "http://localhost:16686",
            "service": "parity-api",
            "__field.labels.http_route": "/api/v1/products/{product_id}",
            "__from": "1700000000000",
            "__to": "1700000600000",
            "__value.raw": "0.25",
        },
    )
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "http://localhost:16686/search"
    assert query["service"] == "parity-api"
    assert json.loads(query["tags"]) == {"http.route": "/api/v1/products/{product_id}"}
    assert (query["start"], query["end"]) == ("1700000000000000", "1700000600000000")
    assert query["minDuration"] == "0.25s"
    assert query["lookback"] == "custom"


def test_explore_link_of_an_error_series_searches_failed_traces_of_the_route() -> None:
    model = dashboards()["api-overview.json"]
    panel = next(p for p in iter_panels(model) if p["title"] == "5xx ratio by route")
    internal = next(
        lnk["internal"] for lnk in panel["fieldConfig"]["defaults"]["links"] if "internal" in lnk
    )
    assert internal["query"]["tags"] == 'http.route="${__field.labels.http_route}" error="true"'
    assert "minDuration" not in internal["query"]


def test_generator_cli_writes_then_checks(tmp_path: Path) -> None:
    """`--check` on an empty directory -> 1 (stale); write -> 0; `--check` again -> 0."""
    assert grafana_dashboards.main(["--check", "--out", str(tmp_path)]) == 1
    assert grafana_dashboards.main(["--out", str(tmp_path)]) == 0
    assert grafana_dashboards.main(["--check", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render_all())
