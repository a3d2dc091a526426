"""Building blocks shared by the dashboards: datasources, selectors, panels with their
links to traces.

Panels are built with grafana-foundation-sdk (the build for Grafana 11.6's dashboard
schema). Two things the SDK does not model are written as plain JSON objects here:
Jaeger queries and "internal" data links (links that open Grafana Explore on another
datasource, which Grafana builds from a query object instead of a URL).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import (
    heatmap,
    stat,
    statetimeline,
    table,
    text,
    timeseries,
)
from grafana_foundation_sdk.builders.common import VizLegendOptions, VizTooltipOptions
from grafana_foundation_sdk.builders.prometheus import Dataquery as PromQuery
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.variants import Dataquery
from grafana_foundation_sdk.models.common import (
    GraphDrawStyle,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    TooltipDisplayMode,
    VisibilityMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLink,
    DashboardLinkType,
    DataSourceRef,
    DataTransformerConfig,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableOption,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

# The uids are fixed in observability/grafana/provisioning/datasources/datasources.yaml.
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
JAEGER = DataSourceRef(type_val="jaeger", uid="jaeger")

# Probes and scrapes are not user traffic (same rule as observability/prometheus/rules).
NOT_PROBES = 'http_route!~"/health|/ready|/metrics"'
API = 'job="api", instance=~"$instance"'
HTTP = f"{API}, {NOT_PROBES}"

# Defaults of the dashboard variables that feed the links to traces.
DEFAULT_SERVICE = "parity-api"
DEFAULT_JAEGER_URL = "http://localhost:16686"


# --- Dashboards ------------------------------------------------------------------------


def parity_dashboard(
    title: str,
    *,
    uid: str,
    description: str,
    tag: str,
    refresh: str,
    since: str,
    api_variables: bool = True,
) -> dash.Dashboard:
    """What every dashboard of ours shares: tags, crosshair and, for dashboards of the
    API's own metrics (`api_variables`), the variables that filter instances and feed
    the links to traces."""
    board = (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["parity", tag])
        .refresh(refresh)
        .time(since, "now")
        .tooltip(DashboardCursorSync.CROSSHAIR)
    )
    if api_variables:
        board = (
            board.with_variable(instance_variable())
            .with_variable(service_variable())
            .with_variable(jaeger_url_variable())
        )
    return board


def dashboard_link(title: str, tag: str) -> dash.DashboardLink:
    """A link to the dashboards tagged `tag`, keeping the variables and time range."""
    return (
        dash.DashboardLink(title)
        .type(DashboardLinkType.DASHBOARDS)
        .tags([tag])
        .include_vars(True)
        .keep_time(True)
    )


def with_rows(board: dash.Dashboard, rows: Iterable[tuple[str, Iterable[Any]]]) -> dash.Dashboard:
    for title, panels in rows:
        board = board.with_row(dash.Row(title))
        for panel in panels:
            board = board.with_panel(panel)
    return board


# --- Dashboard variables ---------------------------------------------------------------


def instance_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable("instance")
        .label("API instance")
        .description("API replicas (Prometheus targets of job api)")
        .datasource(PROMETHEUS)
        .query('label_values(up{job="api"}, instance)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def service_variable() -> dash.TextBoxVariable:
    return (
        dash.TextBoxVariable("service")
        .label("Service in traces")
        .description("OpenTelemetry service.name of the API (SERVICE_NAME)")
        .default_value(DEFAULT_SERVICE)
    )


def jaeger_url_variable() -> dash.TextBoxVariable:
    return (
        dash.TextBoxVariable("jaeger_url")
        .label("Jaeger UI")
        .description("Jaeger UI as your browser reaches it (the 'in Jaeger UI' links)")
        .default_value(DEFAULT_JAEGER_URL)
    )


def slow_variable() -> dash.CustomVariable:
    return (
        dash.CustomVariable("slow")
        .label("Slow is over")
        .description("Minimum duration of the traces listed in 'Slow traces'")
        .values("100ms,250ms,500ms,1s")
        .current(VariableOption(selected=True, text="250ms", value="250ms"))
    )


# --- Queries ---------------------------------------------------------------------------


def prom(expr: str, legend: str = "__auto", ref_id: str = "A") -> PromQuery:
    return PromQuery().expr(expr).legend_format(legend).ref_id(ref_id).datasource(PROMETHEUS)


def per_second(metric: str, selector: str = API, matchers: str = "") -> str:
    """`rate(metric{selector, matchers}[$__rate_interval])`."""
    labels = ", ".join(filter(None, [selector, matchers]))
    return f"rate({metric}{{{labels}}}[$__rate_interval])"


def quantile(q: float, bucket_metric: str, selector: str, by: str = "") -> str:
    group = ", ".join(filter(None, [by, "le"]))
    return (
        f"histogram_quantile({q}, sum by ({group}) "
        f"(rate({bucket_metric}{{{selector}}}[$__rate_interval])))"
    )


def ratio_or_zero(part: str, whole: str, by: str = "") -> str:
    """`part / whole`, 0 (not "no data") when there is traffic but nothing to count:
    the same idiom as the recording rules."""
    agg = f"sum by ({by})" if by else "sum"
    return f"({agg} ({part}) or 0 * {agg} ({whole})) / {agg} ({whole})"


class JaegerQuery:
    """A Grafana Jaeger datasource query (the SDK has no builder for it)."""

    def __init__(self, **query: Any) -> None:
        self._query = {"refId": "A", "datasource": {"type": "jaeger", "uid": "jaeger"}, **query}

    def build(self) -> JaegerQuery:
        return self

    def to_json(self) -> dict[str, Any]:
        return self._query


# --- Links to traces -------------------------------------------------------------------


class FieldLink:
    """A data link as Grafana stores it in fieldConfig.defaults.links: either a URL
    or an internal link that opens Explore with a query on another datasource."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self._payload = payload

    def build(self) -> FieldLink:
        return self

    def to_json(self) -> dict[str, Any]:
        return self._payload


def trace_links(
    what: str, *, tags: dict[str, str], min_duration: str = "", errors_only: bool = False
) -> list[Builder[DashboardLink]]:
    """Links from a series to the traces behind it, in Grafana Explore and in Jaeger's UI.

    `tags` maps span attributes to Grafana expressions (e.g. http.route ->
    ${__field.labels.http_route}); `min_duration` keeps only traces slower than it (the
    clicked latency). Grafana URL-encodes variables in URL links by default, so the
    Jaeger UI base URL is inserted raw.
    """
    search_tags = dict(tags, **({"error": "true"} if errors_only else {}))
    logfmt = " ".join(f'{key}="{value}"' for key, value in search_tags.items())
    explore_query: dict[str, Any] = {
        "refId": "A",
        "datasource": {"type": "jaeger", "uid": "jaeger"},
        "queryType": "search",
        "service": "${service}",
        "tags": logfmt,
        "limit": 20,
    }
    if min_duration:
        explore_query["minDuration"] = min_duration
    jaeger_tags = ",".join(f"%22{key}%22%3A%22{value}%22" for key, value in search_tags.items())
    url = (
        "${jaeger_url:raw}/search?service=${service}"
        f"&tags=%7B{jaeger_tags}%7D"
        "&lookback=custom&start=${__from}000&end=${__to}000&limit=20"
    )
    if min_duration:
        url += f"&minDuration={min_duration}"
    # The SDK types a panel's data links as dashboard links; Grafana stores field links
    # in the same place with an `internal` query the SDK's model lacks. The encoder only
    # calls to_json, so FieldLink stands in for the builder it expects.
    links = [
        FieldLink(
            {
                "title": f"Traces: {what} (Explore)",
                "url": "",
                "internal": {
                    "datasourceUid": "jaeger",
                    "datasourceName": "Jaeger",
                    "query": explore_query,
                },
            }
        ),
        FieldLink({"title": f"Traces: {what} (Jaeger UI)", "url": url, "targetBlank": True}),
    ]
    return [cast("Builder[DashboardLink]", link) for link in links]


ROUTE_TAGS = {"http.route": "${__field.labels.http_route}"}


# --- Panels ----------------------------------------------------------------------------


def graph(title: str, description: str, unit: str, *queries: PromQuery) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .draw_style(GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(VisibilityMode.NEVER)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .calcs(["mean", "max", "lastNotNull"])
            .show_legend(True)
        )
        .tooltip(VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
        .span(12)
        .height(8)
    )
    for query in queries:
        panel = panel.with_target(query)
    return panel


def big_number(title: str, description: str, unit: str, query: PromQuery) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .unit(unit)
        .with_target(query)
        .span(4)
        .height(4)
    )


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=value, color=color) for value, color in steps])
    )


def latency_heatmap(title: str, description: str, query: PromQuery) -> heatmap.Panel:
    return (
        heatmap.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .with_target(query.format(PromQueryFormat.HEATMAP))
        .calculate(False)
        .span(12)
        .height(8)
    )


def slow_traces_table(title: str, description: str) -> table.Panel:
    query = JaegerQuery(queryType="search", service="${service}", minDuration="${slow}", limit=20)
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(JAEGER)
        # No SDK builder for Jaeger queries: JaegerQuery has the two methods the
        # encoder calls (build, to_json), so it stands in for one.
        .with_target(cast("Builder[Dataquery]", query))
        .span(12)
        .height(8)
    )


def state_timeline(
    title: str, description: str, query: PromQuery, states: dict[int, tuple[str, str]]
) -> statetimeline.Panel:
    """One lane per series, coloured by its state over time; `states` maps each value
    the query returns to the (text, colour) shown for it."""
    mapping = ValueMap(
        options={
            str(value): ValueMappingResult(text=label, color=color, index=index)
            for index, (value, (label, color)) in enumerate(sorted(states.items()))
        }
    )
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .with_target(query)
        .mappings([mapping])
        .show_value(VisibilityMode.AUTO)
        .merge_values(True)
        .row_height(0.8)
        .fill_opacity(80)
        .line_width(0)
        .legend(
            VizLegendOptions()
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .span(24)
        .height(8)
    )


def snapshot_table(
    title: str,
    description: str,
    *queries: PromQuery,
    hide: Iterable[str] = (),
    rename: dict[str, str] | None = None,
) -> table.Panel:
    """The latest value of each query as one table: instant queries merged on their
    common labels, columns `hide` left out and `rename`d."""
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(PROMETHEUS)
        .with_transformation(DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": dict.fromkeys(["Time", *hide], True),
                    "renameByName": rename or {},
                },
            )
        )
        .span(12)
        .height(8)
    )
    for query in queries:
        panel = panel.with_target(query.instant().format(PromQueryFormat.TABLE))
    return panel


def note(title: str, markdown: str, height: int = 5) -> text.Panel:
    return text.Panel().title(title).content(markdown).span(24).height(height)
