"""A real Prometheus scrapes a real worker: the totals it stores are the allocation API's.

Debian's `prometheus` server (the package ./run-tests unpacks promtool from) runs on a free
loopback port with a temporary config and storage, scraping a worker that has served the whole
bundled Azure trace. Its HTTP API must then answer `sum(llm_request_cost_dollars_total)` with the
allocation API's total, and every query of the Grafana dashboard must run on it.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from costflux.embedded import free_port
from tests.deploy.dashboard import as_promql, metric_names, queries
from tests.integration.expected import azure_rows
from tests.integration.test_pipeline import TRACE_SPAN
from tests.integration.worker_process import WorkerProcess
from tests.prometheus_tools import tool_or_skip

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL = "1s"
# What the bundled trace fills in; the GPU, budget and spike series stay empty without GPU
# samples or budgets, so only queries reading these alone must return data.
FILLED_BY_THE_TRACE = {
    "llm_request_cost_dollars_total",
    "llm_requests_total",
    "llm_tokens_total",
    "costflux_ingest_events_total",
    "costflux_watermark_timestamp_seconds",
    # Ingest's own health: each series exists from the start (at 0) or fills with the trace.
    "costflux_ingest_unapplied_messages",
    "costflux_flush_apply_seconds_bucket",
    "costflux_flush_apply_seconds_sum",
    "costflux_flush_apply_seconds_count",
    "costflux_ingest_resyncs_total",
    "costflux_ingest_lost_messages_total",
}


class PrometheusServer:
    """One prometheus process on 127.0.0.1, scraping ``target`` every second."""

    def __init__(self, binary: str, target: str, directory: Path) -> None:
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
            "scrape_configs": [
                {"job_name": "costflux", "static_configs": [{"targets": [target]}]}
            ],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.base = f"http://127.0.0.1:{free_port()}"
        self.log_path = directory / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - a fixed command line on our own files
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={self.base.removeprefix('http://')}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through /api/v1/query; its result vector."""
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]["result"]  # type: ignore[no-any-return]

    def value(self, promql: str) -> float | None:
        """The single value ``promql`` gives, or None while it gives nothing."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, want: float, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        seen: float | None = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "prometheus exited:\n" + self.log_tail()
            try:
                seen = self.value(promql)
            except OSError:  # not listening yet
                seen = None
            if seen == want:
                return
            time.sleep(0.2)
        raise AssertionError(f"{promql} is {seen}, not {want}, after {timeout_s}s\n"
                             + self.log_tail())

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        finally:
            if self.process.poll() is None:  # it did not stop in time
                self.process.kill()
                self.process.wait(10)
            self._log.close()


@pytest.fixture
def prometheus(azure_worker: WorkerProcess, tmp_path: Path) -> Iterator[PrometheusServer]:
    """Prometheus scraping ``azure_worker`` until every request is in its counters."""
    binary = tool_or_skip("prometheus")
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server = PrometheusServer(binary, f"127.0.0.1:{azure_worker.settings.http_port}", directory)
    try:
        server.wait_for('up{job="costflux"}', 1)
        server.wait_for("sum(llm_requests_total)", len(azure_rows()))
        yield server
    finally:
        server.stop()


def test_prometheus_total_cost_is_the_allocation_apis(
    prometheus: PrometheusServer, azure_worker: WorkerProcess
) -> None:
    rows = azure_worker.allocation(TRACE_SPAN, "model").values()
    exact = sum(Decimal(row["totalCostExact"]) for row in rows)
    # The trace has no GPU samples: its whole cost is token cost, which the counter counts.
    assert all(row["gpuCost"] == row["idleCost"] == 0 for row in rows)
    assert exact > 0

    scraped = prometheus.value("sum(llm_request_cost_dollars_total)")
    assert scraped is not None
    # The counter adds float dollars per applied row; the API adds exact pico-dollars.
    assert abs(Decimal(scraped) - exact) <= exact * Decimal("1e-12")
    # And the scrape keeps each of the worker's series to the last bit.
    series = prometheus.query("llm_request_cost_dollars_total")
    assert series
    added_by_prometheus = ("__name__", "job", "instance")
    for one in series:
        labels = {k: v for k, v in one["metric"].items() if k not in added_by_prometheus}
        own = azure_worker.metric("llm_request_cost_dollars_total", **labels)
        assert float(one["value"][1]) == own, labels
    per_model = {
        series["metric"]["model"]: Decimal(series["value"][1])
        for series in prometheus.query("sum by (model) (llm_request_cost_dollars_total)")
    }
    by_model = azure_worker.allocation(TRACE_SPAN, "model")
    assert per_model.keys() == by_model.keys()
    for model, cost in per_model.items():
        want = Decimal(by_model[model]["totalCostExact"])
        assert abs(cost - want) <= want * Decimal("1e-12"), model


def test_every_dashboard_query_runs_on_prometheus(prometheus: PrometheusServer) -> None:
    # rate() and increase() need two samples in their range; take three scrapes to be sure.
    prometheus.wait_for('clamp_max(count_over_time(up{job="costflux"}[1m]), 3)', 3)
    for query in queries():
        if query.variable:
            continue
        result = prometheus.query(as_promql(query.expr))
        if metric_names(query) <= FILLED_BY_THE_TRACE:
            assert result, f"{query.where}: no data from {query.expr}"
