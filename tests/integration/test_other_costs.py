"""Other cost components end to end: a worker with ``other_costs`` in its price file answers
``/model/allocation`` (and ``costflux report``) with each team's share, checked against an
independent recomputation from the raw trace (Fraction arithmetic written out here)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from costflux.cli import main
from costflux.settings import Settings
from tests.integration.expected import azure_rows, totals_by
from tests.integration.test_pipeline import TRACE_SPAN, produce_trace, wait_for_requests
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

ROWS = 1500
PICO = 10**12
NOVEMBER_2023_MS = 1_698_796_800_000  # 2023-11-01T00:00:00Z
NOVEMBER_LENGTH_MS = 30 * 86_400_000
TRACE_START_MS = 1_700_157_600_000  # 2023-11-16T18:00:00Z
HOUR_MS = 3_600_000

#: name -> ($ per month, allocate_by), as written in the price file below.
COMPONENTS = {
    "storage": (Decimal("4800"), "cost"),
    "network": (Decimal("1234.56"), "requests"),
    "operations": (Decimal("2000"), "even"),
    "logs": (Decimal("100.5"), "tokens"),
}
PRICE_FILE = """\
model_costs:
  llama-2-70b: {input_tokens: 0.0008, output_tokens: 0.0016}
  llama-2-7b: {input_tokens: 0.0001, output_tokens: 0.0002}
  gpt-4: {input_tokens: 0.03, output_tokens: 0.06}
other_costs:
""" + "".join(f"  {name}: {{monthly: {amount}, allocate_by: {by}}}\n"
              for name, (amount, by) in COMPONENTS.items())


def amount_in_november(dollars: Decimal, start_ms: int, end_ms: int) -> int:
    """The documented rule: floor of November's running total at each end, differenced."""
    def running(ms: int) -> int:
        return math.floor(Fraction(int(dollars * PICO) * (ms - NOVEMBER_2023_MS),
                                   NOVEMBER_LENGTH_MS))
    return running(end_ms) - running(start_ms)


def weight(group: dict[str, Any], allocate_by: str) -> Fraction:
    return {"cost": Fraction(group["cost"]), "requests": Fraction(group["requests"]),
            "tokens": Fraction(group["input"] + group["output"]), "even": Fraction(1)}[allocate_by]


def assert_shares(served: dict[str, dict[str, Any]], start_ms: int, end_ms: int) -> None:
    """Every component's parts sum to its prorated amount, each within a pico-dollar of its
    exact proportional share of the trace's own cost, requests or tokens."""
    expected = totals_by(azure_rows(ROWS), "team")
    assert set(served) == set(expected)
    for component, (dollars, allocate_by) in COMPONENTS.items():
        amount = amount_in_november(dollars, start_ms, end_ms)
        whole = sum(weight(group, allocate_by) for group in expected.values())
        parts = {name: Decimal(row["otherCostsExact"][component]) * PICO
                 for name, row in served.items()}
        assert sum(parts.values()) == amount, component
        for name, group in expected.items():
            exact_share = amount * weight(group, allocate_by) / whole
            assert abs(Fraction(parts[name]) - exact_share) < 1, (component, name)
    for name, row in served.items():
        other = sum(Decimal(v) for v in row["otherCostsExact"].values())
        assert Decimal(row["otherCostExact"]) == other
        assert Decimal(row["totalCostExact"]) == expected[name]["cost"]  # usage cost unchanged


def test_other_costs_are_prorated_and_shared_as_recomputed_from_the_trace(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    prices = tmp_path / "pricing.yaml"
    prices.write_text(PRICE_FILE)
    worker = start_worker(settings_for(pricing_file=prices))
    worker.wait_ready()
    produce_trace(worker.settings, limit=ROWS, speed=0)
    wait_for_requests(worker, ROWS)

    # The trace's two hours, one set.
    assert_shares(worker.allocation(TRACE_SPAN, "label:team"),
                  TRACE_START_MS, TRACE_START_MS + 2 * HOUR_MS)

    # One set per hour, each charged its own hour; together exactly the two hours.
    status, body = worker.get("/model/allocation", window=TRACE_SPAN, aggregate="label:team",
                              step="1h")
    assert status == 200, body
    hourly = [sum(Decimal(row["otherCostExact"]) for row in step.values()) * PICO
              for step in body["data"]]
    assert hourly == [
        sum(amount_in_november(d, TRACE_START_MS + h * HOUR_MS, TRACE_START_MS + (h + 1) * HOUR_MS)
            for d, _ in COMPONENTS.values())
        for h in range(2)]

    # An hour without usage: everything to __unallocated__.
    empty = worker.allocation("2023-11-16T10:00:00Z,2023-11-16T11:00:00Z", "label:team")
    start = TRACE_START_MS - 8 * HOUR_MS
    assert list(empty) == ["__unallocated__"]
    assert {c: Decimal(v) * PICO for c, v in empty["__unallocated__"]["otherCostsExact"].items()
            } == {c: amount_in_november(d, start, start + HOUR_MS)
                  for c, (d, _) in COMPONENTS.items()}

    # costflux report: the Other column's total is the components' amounts.
    assert main(["report", "--window", TRACE_SPAN, "--by", "team", "--format", "json",
                 "--url", worker.base]) == 0
    report = json.loads(capsys.readouterr().out)
    assert Decimal(report["otherTotal"]) * PICO == sum(
        amount_in_november(d, TRACE_START_MS, TRACE_START_MS + 2 * HOUR_MS)
        for d, _ in COMPONENTS.values())
