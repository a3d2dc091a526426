"""Every PromQL expression the observability stack evaluates, extracted from the files
themselves: Grafana dashboards (panel targets and query variables), the Grafana
datasource provisioning (trace-to-metrics queries) and the Prometheus rule files
(recording rules, the series they record, and the signals of alert rules).

    from parity.harness.promql_inventory import inventory
    for item in inventory(GrafanaContext(scrape_interval=1.0)):
        print(item.where, item.query)

Used by `parity verify dashboards` and the tests to query each expression against
a real Prometheus. Nothing is copied by hand: a panel added to a dashboard is checked
the next time they run.

What "returns data" means for an alert: an alert expression is empty whenever the
system is healthy (`error_ratio > 0.05` has no result at 0 % errors), so the test
queries the alert's *signals* instead: the expression with its threshold comparisons
removed (`error_ratio`), each side of `and`/`or`, and the argument of `absent()`. Each
signal must return data; the full expression must evaluate without error in
Prometheus' rule manager (rule health "ok"), and promtool's unit tests
(observability/prometheus/tests/) prove the thresholds fire when they should.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from parity.harness.repo import REPO_ROOT

OBSERVABILITY = REPO_ROOT / "observability"
DASHBOARD_DIR = OBSERVABILITY / "grafana" / "dashboards"
DATASOURCES_FILE = OBSERVABILITY / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
RULES_DIR = OBSERVABILITY / "prometheus" / "rules"

COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
SET_OPERATORS = {"and", "or", "unless"}


@dataclass(frozen=True)
class Expression:
    """One PromQL query to run: where it comes from, as written, and as sent."""

    source: str  # file, relative to the repository
    where: str  # e.g. "panel 14 'Latency p99 by route' A"
    kind: str  # panel | variable | datasource | record | recorded | alert-signal
    written: str  # as in the file (Grafana variables, alert thresholds)
    query: str  # what Prometheus is asked

    def __str__(self) -> str:
        return f"{self.source}: {self.where}"


# --- Grafana variables -------------------------------------------------------------


@dataclass
class GrafanaContext:
    """What Grafana substitutes into a query before sending it to Prometheus.

    `scrape_interval` is the datasource's timeInterval; `step` the query step (Grafana's
    $__interval). $__rate_interval follows Grafana's definition:
    max($__interval + scrape interval, 4 × scrape interval).
    """

    scrape_interval: float = 15.0
    step: float = 15.0
    range_seconds: float = 1800.0
    extra: dict[str, str] = field(default_factory=dict)

    def builtins(self) -> dict[str, str]:
        rate_interval = max(self.step + self.scrape_interval, 4 * self.scrape_interval)
        return {
            "__rate_interval": duration(rate_interval),
            "__interval": duration(self.step),
            "__interval_ms": str(int(self.step * 1000)),
            "__range": duration(self.range_seconds),
            "__range_s": str(int(self.range_seconds)),
            # Trace-to-metrics queries: Grafana puts the span's tags here.
            "__tags": 'http_route=~".+"',
            **self.extra,
        }


def duration(seconds: float) -> str:
    """Seconds as a PromQL duration (integer milliseconds, which PromQL always takes)."""
    return f"{round(seconds * 1000)}ms"


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)(?::\w+)?\]\]")


def variable_values(model: dict[str, Any]) -> dict[str, str]:
    """The value Grafana gives each dashboard variable by default, as it would appear
    in a query: "All" of a multi-value variable is its allValue (a regex)."""
    values = {}
    for variable in model.get("templating", {}).get("list", []):
        name, kind = variable["name"], variable.get("type")
        current = (variable.get("current") or {}).get("value")
        if variable.get("includeAll") and current in (None, "$__all", ["$__all"]):
            values[name] = variable.get("allValue") or ".*"
        elif current not in (None, "", []):
            values[name] = current if isinstance(current, str) else "|".join(current)
        elif kind in ("textbox", "constant", "custom"):
            values[name] = str(variable.get("query", "")).split(",")[0].strip()
        else:
            raise ValueError(f"variable ${name}: no default value to query with")
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $var, ${var}, ${var:format} and [[var]]; an unknown name is an error."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


# --- Dashboards ----------------------------------------------------------------------


def iter_panels(model: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in model.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def is_prometheus(datasource: Any) -> bool:
    return isinstance(datasource, dict) and datasource.get("type") == "prometheus"


def dashboard_expressions(path: Path, context: GrafanaContext) -> list[Expression]:
    model = json.loads(path.read_text())
    values = {**variable_values(model), **context.builtins()}
    source = relative(path)
    found = []
    for variable in model.get("templating", {}).get("list", []):
        if variable.get("type") == "query" and is_prometheus(variable.get("datasource")):
            query = label_values_query(str(variable["query"]))
            found.append(
                Expression(
                    source, f"variable ${variable['name']}", "variable", variable["query"], query
                )
            )
    for panel in iter_panels(model):
        for target in panel.get("targets", []):
            if "expr" not in target or not is_prometheus(
                target.get("datasource", panel.get("datasource"))
            ):
                continue
            where = f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId', '')}"
            found.append(
                Expression(
                    source,
                    where.strip(),
                    "panel",
                    target["expr"],
                    substitute(target["expr"], values),
                )
            )
    return found


def label_values_query(definition: str) -> str:
    """`label_values(selector, label)` -> a query that returns one series per value."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", definition)
    if not match:
        raise ValueError(f"unsupported variable query {definition!r}")
    selector, label = match.groups()
    return f"count by ({label}) ({selector})"


# --- Grafana datasources -------------------------------------------------------------


def datasource_expressions(path: Path, context: GrafanaContext) -> list[Expression]:
    """PromQL in datasource settings (Jaeger's trace-to-metrics queries). Provisioning
    files escape `$` as `$$` (Grafana expands environment variables in them)."""
    document = yaml.safe_load(path.read_text())
    found = []
    for datasource in document.get("datasources", []):
        links = datasource.get("jsonData", {}).get("tracesToMetrics", {})
        for query in links.get("queries", []):
            written = query["query"].replace("$$", "$")
            found.append(
                Expression(
                    relative(path),
                    f"datasource {datasource['name']!r} trace-to-metrics {query['name']!r}",
                    "datasource",
                    written,
                    substitute(written, context.builtins()),
                )
            )
    return found


# --- Rules ---------------------------------------------------------------------------


def rule_expressions(path: Path) -> list[Expression]:
    document = yaml.safe_load(path.read_text())
    source = relative(path)
    found = []
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            expr = rule["expr"].strip()
            if "record" in rule:
                name = rule["record"]
                found.append(Expression(source, f"record {name}", "record", expr, expr))
                found.append(Expression(source, f"recorded series {name}", "recorded", name, name))
            else:
                signals = alert_signals(expr)
                for number, signal in enumerate(signals, 1):
                    where = f"alert {rule['alert']} signal {number}/{len(signals)}"
                    found.append(Expression(source, where, "alert-signal", expr, signal))
    return found


def alert_signals(expr: str) -> list[str]:
    """The parts of an alert expression that must have data when the system is healthy:
    comparisons against a number lose the number, set operators split into both sides,
    absent(x) becomes x."""
    return [str(node) for node in _signals(promql_parser.parse(expr))]


def _signals(node: Any) -> list[Any]:
    if isinstance(node, promql_parser.ParenExpr):
        return _signals(node.expr)
    if isinstance(node, promql_parser.BinaryExpr):
        operator = str(node.op)
        if operator in SET_OPERATORS:
            return _signals(node.lhs) + _signals(node.rhs)
        returns_bool = node.modifier is not None and node.modifier.return_bool
        if operator in COMPARISONS and not returns_bool:
            if isinstance(node.rhs, promql_parser.NumberLiteral):
                return _signals(node.lhs)
            if isinstance(node.lhs, promql_parser.NumberLiteral):
                return _signals(node.rhs)
    if isinstance(node, promql_parser.Call) and node.func.name in ("absent", "absent_over_time"):
        return _signals(node.args[0])
    return [node]


# --- Everything ----------------------------------------------------------------------


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# Dashboards whose panels need a load generator's metrics (Locust's exporter, job
# `locust`): they have data only while a load test runs and is scraped, which the
# API-only traffic of verify_dashboards.py does not do. tests/test_loadtest_dashboard.py
# checks them, with this same harness, while Locust runs; inventory() leaves them out
# unless asked (include_load_test=True).
LOAD_TEST_DASHBOARDS = frozenset({"loadtest.json"})


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def rule_files(directory: Path = RULES_DIR) -> list[Path]:
    return sorted(directory.glob("*.yml"))


def inventory(
    context: GrafanaContext,
    dashboards: list[Path] | None = None,
    rules: list[Path] | None = None,
    datasources: Path | None = DATASOURCES_FILE,
    *,
    include_load_test: bool = False,
) -> list[Expression]:
    """Every expression of every dashboard (the load-test ones only if
    `include_load_test`), the datasource file and every rule file."""
    if dashboards is None:
        dashboards = [
            path
            for path in dashboard_files()
            if include_load_test or path.name not in LOAD_TEST_DASHBOARDS
        ]
    found: list[Expression] = []
    for path in dashboards:
        found += dashboard_expressions(path, context)
    if datasources is not None:
        found += datasource_expressions(datasources, context)
    for path in rules if rules is not None else rule_files():
        found += rule_expressions(path)
    return found


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (metrics and recorded rules)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def source_metrics(expr: str, recorded: dict[str, str]) -> set[str]:
    """The scraped metrics behind an expression, following recording rules
    (`recorded` maps a recorded name to its expression)."""
    found: set[str] = set()
    pending = list(metric_names(expr))
    while pending:
        name = pending.pop()
        if name in recorded:
            pending += [n for n in metric_names(recorded[name]) if n not in found]
        found.add(name)
    return {name for name in found if name not in recorded}


def required_jobs(expr: str, recorded: dict[str, str]) -> set[str]:
    """The scrape jobs an expression selects by name (`job="lb"`), following recording
    rules: it can have data only where those jobs are scraped. A regex (`job=~"a|b"`)
    requires none of them in particular and is not counted."""
    jobs: set[str] = set()
    seen: set[str] = set()
    pending = [expr]
    while pending:
        query = pending.pop()

        def visit(node: Any) -> None:
            if not isinstance(node, promql_parser.VectorSelector):
                return
            for matcher in node.matchers.matchers:
                if matcher.name == "job" and matcher.op == promql_parser.MatchOp.Equal:
                    jobs.add(matcher.value)
            if node.name in recorded and node.name not in seen:
                seen.add(node.name)
                pending.append(recorded[node.name])

        promql_parser.walk(promql_parser.parse(query), visit)
    return jobs


def recorded_rules(rules: list[Path] | None = None) -> dict[str, str]:
    """Recorded series name -> expression, from every rule file."""
    recorded = {}
    for path in rules if rules is not None else rule_files():
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                if "record" in rule:
                    recorded[rule["record"]] = rule["expr"]
    return recorded
