"""A Kubecost API client, written as such clients are, used unchanged against a costflux worker.

The worker replays the bundled Azure trace; its ``/model/allocation`` answers must be what a
Kubecost client reads: ``{"code": 200, "data": [set, ...]}``, one set per step.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.integration.expected import azure_rows, totals_by
from tests.integration.test_pipeline import TRACE_SPAN
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration


class KubecostAPI:
    """The shape of a typical Kubecost Python client: GET /model/allocation, read ``data``."""

    def __init__(self, base_url: str, timeout_s: float = 10) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def allocation(
        self,
        window: str,
        aggregate: str = "namespace",
        step: str | None = None,
        accumulate: bool | None = None,
        share_idle: bool | None = None,
    ) -> list[dict[str, dict[str, Any]]]:
        """The allocation sets of ``window``, one per step (or one, accumulated)."""
        params: dict[str, str] = {"window": window, "aggregate": aggregate}
        if step is not None:
            params["step"] = step
        if accumulate is not None:
            params["accumulate"] = str(accumulate).lower()
        if share_idle is not None:
            params["shareIdle"] = str(share_idle).lower()
        response = self.session.get(f"{self.base_url}/model/allocation", params=params,
                                    timeout=self.timeout_s)
        response.raise_for_status()
        body = response.json()
        if body.get("code") != 200:
            raise RuntimeError(f"Kubecost API error: {body.get('message')}")
        sets: list[dict[str, dict[str, Any]]] = body["data"]
        return sets

    def total_cost_by(self, window: str, aggregate: str) -> dict[str, Decimal]:
        """Accumulated total cost per aggregate value, exact where the server gives it."""
        totals: dict[str, Decimal] = {}
        for allocation_set in self.allocation(window, aggregate, accumulate=True):
            for name, allocation in allocation_set.items():
                cost = Decimal(str(allocation.get("totalCostExact", allocation["totalCost"])))
                totals[name] = totals.get(name, Decimal(0)) + cost
        return totals


def summed(sets: list[dict[str, dict[str, Any]]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for allocation_set in sets:
        for name, allocation in allocation_set.items():
            totals[name] = totals.get(name, Decimal(0)) + Decimal(allocation["totalCostExact"])
    return totals


def test_a_kubecost_client_reads_the_azure_trace_unchanged(azure_worker: WorkerProcess) -> None:
    expected = {name: group["cost"] for name, group in totals_by(azure_rows(), "team").items()}
    client = KubecostAPI(azure_worker.base)
    try:
        # Per-team totals over the trace span equal the independent recomputation, exactly.
        assert client.total_cost_by(TRACE_SPAN, "label:team") == expected

        # step=1h over the 2-hour span: two sets, each with its own window, summing to the
        # accumulated set.
        hourly = client.allocation(TRACE_SPAN, "label:team", step="1h")
        assert len(hourly) == 2
        assert [{(a["start"], a["end"]) for a in s.values()} for s in hourly] == [
            {("2023-11-16T18:00:00Z", "2023-11-16T19:00:00Z")},
            {("2023-11-16T19:00:00Z", "2023-11-16T20:00:00Z")},
        ]
        accumulated = client.allocation(TRACE_SPAN, "label:team", step="1h", accumulate=True)
        assert len(accumulated) == 1
        assert summed(hourly) == summed(accumulated) == expected

        # Keywords, relative to the newest event (Thursday 2023-11-16, 19:xx UTC).
        for keyword in ("today", "week", "month"):
            assert client.total_cost_by(keyword, "label:team") == expected, keyword
        for keyword in ("yesterday", "lastweek", "lastmonth"):
            assert client.allocation(keyword, "label:team") == [], keyword
        daily = client.allocation("week", "model", step="1d")
        assert len(daily) == 5  # Sunday 12th to Thursday 16th
        assert [bool(s) for s in daily] == [False] * 4 + [True]

        # deployment and cluster, alone and combined, as Kubecost clients ask for them.
        events = azure_rows()
        for aggregate in ("deployment", "cluster", "cluster,deployment", "label:cluster,model"):
            want = {name: group["cost"] for name, group in totals_by(events, aggregate).items()}
            assert client.total_cost_by(TRACE_SPAN, aggregate) == want, aggregate
        assert len(client.total_cost_by(TRACE_SPAN, "cluster,deployment")) == 6

        # What costflux does not aggregate by is a clear 400, which the client raises on.
        for aggregate in ("node", "pod", "model,container"):
            with pytest.raises(requests.HTTPError) as caught:
                client.allocation(TRACE_SPAN, aggregate)
            assert caught.value.response.status_code == 400
            assert "does not record" in caught.value.response.json()["message"]
        status, body = azure_worker.get("/model/allocation", window=TRACE_SPAN, step="1s")
        assert status == 400 and "step" in body["message"]
    finally:
        client.close()
