"""Grafana dashboards as code. Each module builds one dashboard with
grafana-foundation-sdk; `render_all()` turns them into the JSON files provisioned from
observability/grafana/dashboards/ (`make dashboards` writes them, a test checks that the
committed files match).

To add a dashboard: write a module with a `build()` returning a
`grafana_foundation_sdk.builders.dashboard.Dashboard`, and list it in DASHBOARDS.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from parity.dashboards import api_overview, dependencies, load_balancer, loadtest
from parity.harness.repo import REPO_ROOT

DASHBOARD_DIR = REPO_ROOT / "observability" / "grafana" / "dashboards"

# File name -> builder. The file name is what Grafana's file provider loads.
DASHBOARDS: dict[str, Callable[[], Any]] = {
    "api-overview.json": api_overview.build,
    "dependencies.json": dependencies.build,
    "load-balancer.json": load_balancer.build,
    "loadtest.json": loadtest.build,
}


def number_panels(model: dict[str, Any]) -> None:
    """Give every panel (rows included) a unique id in layout order: Grafana keys
    panel state, links and `viewPanel=` URLs on it, and the SDK leaves it at 0."""
    next_id = 1
    for panel in model.get("panels", []):
        for item in [panel, *panel.get("panels", [])]:
            item["id"] = next_id
            next_id += 1


def render(build: Callable[[], Any]) -> str:
    model = json.loads(JSONEncoder().encode(build().build()))
    number_panels(model)
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: render(build) for name, build in DASHBOARDS.items()}
