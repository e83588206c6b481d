"""The Grafana dashboard shipped in infra/grafana asks only for series that `/metrics` really exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infra.bootstrap import Runtime
from tests.harness import background, seed_heater

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "wattledger.json"
METRIC = re.compile(r"\bwattledger_[a-z_]+\b")


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


async def test_every_dashboard_query_names_a_metric_that_metrics_exports(
    runtime: Runtime, client: httpx.AsyncClient
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Live power per device", "Energy per day", "Cost per day", "Online", "Relay lag", "Projector lag",
            "Poll duration"} <= titles  # fmt: skip
    await seed_heater(runtime, "test", readings=1)
    async with background(runtime, poll=False):
        assert (await client.get("/api/devices")).status_code == 200
        runtime.metrics.polled(0.1, TimeoutError())
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    exported: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        # A counter's family is named without `_total`, which its samples carry (and it may have none yet).
        exported |= {family.name, *(sample.name for sample in family.samples)}
        if family.type == "counter":
            exported.add(f"{family.name}_total")
    asked = {name for expr in queries(dashboard) for name in METRIC.findall(expr)}
    assert len(asked) >= 10
    assert asked <= exported, sorted(asked - exported)
