"""The Grafana dashboard's PromQL, and the metric names a worker exports.

Used by tests/deploy/test_grafana.py (offline checks, promtool) and by
tests/integration/test_prometheus_scrape.py (every query on a real Prometheus).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from costflux.agents.alert_metrics import AlertMetrics
from costflux.streams.health import Health
from costflux.streams.metrics import CostMetrics
from tests.deploy.manifests import DASHBOARD_FILE

# The sample names each metric type exposes (prometheus_client's exposition).
_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}
# Values for Grafana's variables that make a dashboard query plain PromQL.
GRAFANA_VARIABLES = {"__range": "1h", "__rate_interval": "1m", "__interval": "15s"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*\w+\s*\)$")


def exported_metric_names() -> set[str]:
    """Every sample name /metrics can show: the worker's metrics on a fresh registry (its
    cost metrics, its alerting metrics and its parts' error and retry counters, as
    costflux.agents.app.build_worker registers them)."""
    registry = CollectorRegistry()
    CostMetrics(registry)
    AlertMetrics(registry, label_cap=1, allowed={})
    Health(registry)
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in _SAMPLE_SUFFIXES[family.type]
    }


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Query:
    where: str  # panel title and refId, or the variable's name
    expr: str
    variable: bool = False


def queries(board: dict[str, Any] | None = None) -> Iterator[Query]:
    """Every PromQL expression on the dashboard: panel targets and variable queries."""
    board = board if board is not None else dashboard()
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield Query(f"{panel['title']} / {target['refId']}", target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            expr = query["query"] if isinstance(query, dict) else query
            yield Query(f"${variable['name']}", expr, variable=True)


def variables_used(expr: str) -> set[str]:
    return {braced or plain for braced, plain in _VARIABLE.findall(expr)}


def as_promql(expr: str, values: dict[str, str] | None = None) -> str:
    """``expr`` with Grafana's variables replaced: built-ins by durations, the rest by ``.*``."""
    values = {**GRAFANA_VARIABLES, **(values or {})}
    return _VARIABLE.sub(lambda m: values.get(m.group(1) or m.group(2), ".*"), expr)


def metric_names(query: Query) -> set[str]:
    """The metric names a query reads (functions, keywords and labels left out)."""
    if query.variable:
        match = _LABEL_VALUES.match(query.expr.strip())
        assert match, f"{query.where}: expected label_values(metric, label), got {query.expr}"
        return {match.group(1)}
    expr = as_promql(query.expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    # Grouping and matching clauses list labels, not metrics.
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    words = re.findall(r"\b([a-zA-Z_:][\w:]*)\b(?!\s*\()", expr)  # not followed by "(": no call
    keywords = {"and", "or", "unless", "bool", "offset", "by", "without", "inf", "nan"}
    return {word for word in words if word.lower() not in keywords}
