"""`costflux report` against a worker serving the bundled Azure trace, checked against an
independent recomputation of the trace (csv module + Decimal prices written out by hand)."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from costflux.cli import main
from tests.integration.expected import azure_rows, totals_by, totals_by_window
from tests.integration.test_pipeline import TRACE_SPAN
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration


def test_reports_by_team_model_deployment_cluster_and_time_of_day_equal_the_recomputation(
    azure_worker: WorkerProcess, capsys: pytest.CaptureFixture[str],
) -> None:
    worker, events = azure_worker, azure_rows()
    for dimension in ("team", "model", "deployment", "cluster"):
        assert main(["report", "--window", TRACE_SPAN, "--by", dimension, "--format", "json",
                     "--url", worker.base]) == 0
        report = json.loads(capsys.readouterr().out)
        expected = totals_by(events, dimension)
        total = sum(group["cost"] for group in expected.values())
        assert Decimal(report["total"]) == total
        assert {row[dimension]: (Decimal(row["cost"]), row["requests"], row["percentage"])
                for row in report["rows"]} == {
            name: (group["cost"], group["requests"],
                   str((group["cost"] * 100 / total).quantize(Decimal("0.1"), ROUND_HALF_EVEN)))
            for name, group in expected.items()}
    assert main(["report", "--window", TRACE_SPAN, "--by", "team", "--format", "markdown",
                 "--url", worker.base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| Team | Cost | Percentage |" and lines[-1].startswith("| Total | $")
    # The trace spans 18:00-20:00 UTC; with peak hours 19-24 the 19:00 hour is peak.
    assert main(["report", "--window", TRACE_SPAN, "--by", "time_of_day", "--format", "json",
                 "--peak-hours", "19-24", "--url", worker.base]) == 0
    by_hour = totals_by_window(events, 3600)
    peak = sum(cost for start, cost in by_hour.items() if (start // 3_600_000) % 24 >= 19)
    report = json.loads(capsys.readouterr().out)
    assert {row["time_of_day"]: Decimal(row["cost"]) for row in report["rows"]} == {
        "peak": peak, "off-peak": sum(by_hour.values()) - peak}


def test_report_without_a_worker_says_what_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    from costflux.embedded import free_port

    assert main(["report", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "is a worker or `costflux demo` running?" in capsys.readouterr().err
