"""`costflux reconcile`, run as a subprocess, against a worker serving the bundled Azure trace:
a provider report equal to an independent recomputation of the trace (csv module + Decimal
prices written out by hand) passes; the same report with one planted 3 % difference fails on
that row alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.expected import azure_rows, event_cost
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

PLANTED = ("2023-11-16", "gpt-4")


def cost_by_day_and_model(events: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Decimal]:
    """The trace's token cost per UTC day and model (the events' ``ts`` are UTC, ``Z``)."""
    costs: dict[tuple[str, str], Decimal] = {}
    for event in events:
        key = (event["ts"][:10], event["model"])
        costs[key] = costs.get(key, Decimal(0)) + event_cost(event)
    return costs


def write_report(path: Path, costs: Mapping[tuple[str, str], Decimal]) -> Path:
    lines = ["date,model,project,cost", *(f"{d},{m},,{c}" for (d, m), c in costs.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def reconcile(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    return subprocess.run([sys.executable, "-m", "costflux", "reconcile", *args],
                          capture_output=True, text=True, timeout=120, env=env, check=False)


def test_reconcile_passes_the_recomputation_and_finds_the_planted_difference(
        azure_worker: WorkerProcess, tmp_path: Path) -> None:
    worker, expected = azure_worker, cost_by_day_and_model(azure_rows())
    assert sorted(expected) == [("2023-11-16", m) for m in ("gpt-4", "llama-2-70b", "llama-2-7b")]
    status, answer = worker.get("/model/allocation", window="2023-11-16T00:00:00Z,"
                                "2023-11-17T00:00:00Z", aggregate="model")
    assert status == 200
    field = ("tokenCostExact" if all("tokenCostExact" in row for row in answer["data"][0].values())
             else "totalCostExact")

    identical = write_report(tmp_path / "identical.csv", expected)
    done = reconcile("--report", str(identical), "--url", worker.base, "--output", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["mismatches"] == 0 and document["costfluxField"] == field
    assert {(r["day"], r["model"]): (Decimal(r["costflux"]), Decimal(r["provider"]), r["status"])
            for r in document["rows"]} == {key: (cost, cost, "ok") for key, cost in
                                           expected.items()}

    planted = dict(expected)
    planted[PLANTED] = expected[PLANTED] * Decimal("1.03")
    report = write_report(tmp_path / "planted.csv", planted)
    done = reconcile("--report", str(report), "--url", worker.base, "--output", "json")
    assert done.returncode == 1, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["mismatches"] == 1
    [row] = [r for r in document["rows"] if r["status"] != "ok"]
    assert ((row["day"], row["model"]), row["status"]) == (PLANTED, "over")
    assert Decimal(row["costflux"]) == expected[PLANTED]
    assert Decimal(row["difference"]) == -expected[PLANTED] * Decimal("0.03")
    assert Decimal(row["percent"]).quantize(Decimal("0.001")) == Decimal("-2.913")  # -3/103

    done = reconcile("--report", str(report), "--url", worker.base)  # the table
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.endswith(" over")] == [list(PLANTED)]
    assert "1 of 3 rows over the tolerance" in lines
    # A looser tolerance lets the planted row pass.
    assert reconcile("--report", str(report), "--url", worker.base,
                     "--tolerance", "3%").returncode == 0


def test_bad_input_exits_2_and_an_unreachable_worker_3(tmp_path: Path) -> None:
    from costflux.embedded import free_port

    report = tmp_path / "bad.csv"
    report.write_text("date,model,project,cost\n2023-11-16,gpt-4,,12.5\n2023-11-16,gpt-4,,x\n")
    done = reconcile("--report", str(report))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"costflux reconcile: {report}: line 3, column cost: 'x' is "
                                   "not a number; write the amount in dollars, e.g. 12.345")
    done = reconcile("--report", str(tmp_path / "absent.json"))
    assert done.returncode == 2 and "--report" in done.stderr and "absent.json" in done.stderr
    report.write_text("date,model,project,cost\n2023-11-16,gpt-4,,12.5\n")
    done = reconcile("--report", str(report), "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 3 and "is a worker or `costflux demo` running?" in done.stderr
