"""`costflux report` against a worker serving the bundled Azure trace, checked against an
independent recomputation of the trace (csv module + Decimal prices written out by hand)."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal

import pytest

from costflux.cli import main
from costflux.settings import Settings
from tests.integration.expected import azure_rows, totals_by
from tests.integration.test_pipeline import TRACE_SPAN, produce_trace, wait_for_requests
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration


def test_reports_by_team_and_model_equal_the_recomputation(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = settings_for()
    produce_trace(settings, limit=None, speed=0)
    events = azure_rows()
    worker = start_worker(settings)
    worker.wait_ready()
    wait_for_requests(worker, len(events))
    for dimension in ("team", "model"):
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


def test_report_without_a_worker_says_what_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    from costflux.embedded import free_port

    assert main(["report", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "is a worker or `costflux demo` running?" in capsys.readouterr().err
