"""deploy/grafana: the dashboard reads what the workers export, and is provisioned where it runs.

The metric names come from the workers' own prometheus_client registry (CostMetrics and
AlertMetrics on a fresh registry), never from a list kept by hand; the queries' syntax is
checked by promtool, and tests/integration/test_prometheus_scrape.py runs every one of them on a
real Prometheus scraping a real worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.dashboard import (
    GRAFANA_VARIABLES,
    Query,
    as_promql,
    dashboard,
    exported_metric_names,
    metric_names,
    queries,
    variables_used,
)
from tests.deploy.manifests import (
    DASHBOARD_FILE,
    GRAFANA,
    K8S,
    PROMETHEUS_CONFIG,
    compose,
    compose_mounts,
    docs,
)
from tests.prometheus_tools import run_promtool

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PROVISIONING = GRAFANA / "provisioning"
# kubectl apply (client side) stores the whole object in an annotation, limited to 256 KiB.
LAST_APPLIED_LIMIT = 262_144


def _panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


# --- the queries ----------------------------------------------------------------------------------


def test_exported_names_come_from_the_workers_registry() -> None:
    names = exported_metric_names()
    # Counters with their _total samples, gauges as they are: the derivation is not vacuous.
    assert {"llm_request_cost_dollars_total", "llm_gpu_utilization_ratio"} <= names
    assert {"llm_budget_status", "llm_cost_spike_ratio", "costflux_alerts_total"} <= names
    # The ingest loop's store metrics, and the parts' retry counter (Health).
    assert {"costflux_flush_apply_seconds_bucket", "costflux_ingest_unapplied_messages",
            "costflux_ingest_resyncs_total", "costflux_dependency_retries_total"} <= names
    assert "llm_request_cost_dollars" not in names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (model) (rate(a_total{team="b_total"}[5m])) * 3600', {"a_total"}),
        ("max by (budget) (x) / on (budget) group_left (team) max by (budget) (y)", {"x", "y"}),
        ("time() - max(z_seconds)", {"z_seconds"}),
        ("(sum(rate(a[$__rate_interval])) or vector(0)) + b * 1e6", {"a", "b"}),
        ('avg_over_time(sum(increase(c_total{m=~"$model"}[1h]))[24h:1h]) > bool 2', {"c_total"}),
    ],
)
def test_metric_names_are_read_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(Query("example", expr)) == names


def test_dashboard_reads_only_metrics_the_worker_exports() -> None:
    exported = exported_metric_names()
    for query in queries():
        used = metric_names(query)
        assert used, f"{query.where}: reads no metric"
        assert used <= exported, f"{query.where}: not exported: {sorted(used - exported)}"


def test_dashboard_shows_every_metric_the_worker_exports() -> None:
    used = {name for query in queries() for name in metric_names(query)}
    shown = {name for name in exported_metric_names() if not name.endswith("_created")}
    assert shown - used == set()


def test_dashboard_covers_the_seeds_cost_views() -> None:
    """Cost by model, team and app, unit cost, GPU utilization and idle cost, budgets, spikes."""
    by_metric: dict[str, set[str]] = {}
    for query in queries():
        for name in metric_names(query):
            by_metric.setdefault(name, set()).add(query.expr)
    cost = by_metric["llm_request_cost_dollars_total"]
    for dimension in ("model", "team", "app"):
        assert any(f"sum by ({dimension})" in expr for expr in cost), dimension
    for name in (
        "llm_cost_per_request_dollars",
        "llm_cost_per_token_dollars",
        "llm_gpu_utilization_ratio",
        "llm_gpu_idle_cost_dollars_total",
        "llm_budget_projected_dollars",
        "llm_cost_spike_ratio",
    ):
        assert name in by_metric, name


def test_every_variable_a_query_uses_is_defined_and_every_definition_used() -> None:
    board = dashboard()
    defined = {variable["name"] for variable in board["templating"]["list"]}
    used = {name for query in queries(board) for name in variables_used(query.expr)}
    assert used - set(GRAFANA_VARIABLES) <= defined
    assert defined - {"datasource"} <= used
    (source,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert (source["name"], source["query"]) == ("datasource", "prometheus")


def test_every_panel_queries_prometheus_through_the_datasource_variable() -> None:
    for panel in _panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(set(refs)) == len(refs), panel["title"]
        assert all(target["datasource"] == DATASOURCE for target in panel["targets"])
        assert panel.get("description"), f"{panel['title']}: say what it shows"


def test_dashboard_layout_fits_the_grid_without_overlaps() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(set(ids)) == len(ids)
    taken: dict[tuple[int, int], str] = {}
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            assert (grid["x"], grid["w"], grid["h"]) == (0, 24, 1), panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    panel_queries = [query for query in queries() if not query.variable]
    rules = [
        {"record": f"dashboard:query_{index}", "expr": as_promql(query.expr)}
        for index, query in enumerate(panel_queries)
    ]
    rules_file = tmp_path / "dashboard.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool("check", "rules", str(rules_file))


# --- the Kubernetes ConfigMap ---------------------------------------------------------------------


def test_the_configmap_is_generated_from_the_one_dashboard_file() -> None:
    kustomization = docs(K8S / "kustomization.yaml")[0]
    (generator,) = [g for g in kustomization["configMapGenerator"]
                    if g["name"] == "costflux-grafana-dashboard"]
    assert [K8S / f for f in generator["files"]] == [DASHBOARD_FILE]
    # The sidecar finds it by this label; a fixed name keeps `kubectl apply -k` replacing it.
    assert generator["options"] == {"disableNameSuffixHash": True,
                                    "labels": {"grafana_dashboard": "1"}}
    assert not list(K8S.glob("configmap-grafana*")), "a second copy of the dashboard"
    # `kubectl apply` keeps the whole object in an annotation, which has a size limit.
    assert len(DASHBOARD_FILE.read_bytes()) < LAST_APPLIED_LIMIT


# --- provisioning in docker compose ---------------------------------------------------------------


def test_compose_grafana_mounts_the_provisioning_and_the_dashboards() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = compose_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    (provider_file,) = (PROVISIONING / "dashboards").glob("*.yaml")
    (provider,) = docs(provider_file)[0]["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == DASHBOARD_FILE.parent
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert mounts[str(home.parent)] / home.name == DASHBOARD_FILE
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_compose_grafana_reads_the_compose_prometheus() -> None:
    (datasource_file,) = (PROVISIONING / "datasources").glob("*.yaml")
    (source,) = docs(datasource_file)[0]["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    url = urlsplit(source["url"])
    prometheus = compose()["services"][url.hostname or ""]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert any(port.split(":")[-1] == str(url.port) for port in prometheus["ports"])
    (config,) = docs(PROMETHEUS_CONFIG)
    assert source["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
