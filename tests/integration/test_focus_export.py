"""`costflux export focus` against real workers: the FinOps Foundation's own validator
(focus-validator 1.0.0, run as its CLI) passes the CSV and the Parquet export of the bundled
trace, and the file reconciles with the allocation API it came from."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from importlib import util
from pathlib import Path
from typing import Any

import pytest

from costflux.cli.demo import DEMO_ASSIGNMENT
from costflux.cli.demo_gpu import demo_gpu_samples
from costflux.cli.export import add_export_command
from costflux.cli.replay import replay
from costflux.core.errors import ConfigError
from costflux.core.trace import Assignment, ColumnMapping
from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from costflux.streams.trace import iter_usage_events
from tests.integration.expected import azure_rows, totals_by
from tests.integration.test_pipeline import wait_for_requests
from tests.integration.worker_process import WorkerProcess
from tests.paths import AZURE_TRACE, REPO

pytestmark = pytest.mark.integration

#: The calendar month holding the bundled trace (2023-11-16, 18:00-20:00 UTC).
NOVEMBER_2023 = "2023-11-01T00:00:00Z,2023-12-01T00:00:00Z"
OVERRIDES = REPO / "tests/fixtures/focus/focus-validator-1.0.0-overrides.yaml"
#: The rules focus-validator 1.0.0 checks on 1.0-preview column names (see OVERRIDES).
PREVIEW_NAMED_RULES = {"ResourceID_Required", "ResourceID_IsString", "ResourceID_Nullable",
                       "SkuPriceId_Nullable"}
CENT = Decimal("0.01")
PART_COSTS = ("x_TextTokenCost", "x_CacheWriteCost", "x_ReasoningCost", "x_AudioCost",
              "x_ImageCost", "x_WebSearchCost")


def export(settings: Settings, *argv: str) -> int:
    """Run ``costflux export ...`` through its own argument parser."""
    parser = argparse.ArgumentParser(prog="costflux")
    add_export_command(parser.add_subparsers(required=True))
    args = parser.parse_args(["export", *argv])
    return int(args.run(args, settings))


def validate(data: Path, overrides: Path | None) -> dict[str, set[str]]:
    """focus-validator's verdict on ``data``: check names by status (passed, failed, ...)."""
    spec = util.find_spec("focus_validator")
    assert spec is not None and spec.submodule_search_locations, "focus-validator missing"
    report = data.with_suffix(".xml")
    command = [sys.executable, "-m", "focus_validator.main", "--data-file", str(data),
               "--validate-version", "1.0", "--output-type", "unittest",
               "--output-destination", str(report)]
    if overrides is not None:
        command += ["--override-file", str(overrides)]
    # 1.0.0 reads its currency code list from a path relative to the working directory
    # (focus_validator/utils/currency_codes.csv): run it where that path resolves.
    packages = Path(next(iter(spec.submodule_search_locations))).parent
    done = subprocess.run(command, cwd=packages, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr
    verdict: dict[str, set[str]] = defaultdict(set)
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = case.attrib["name"].split(" :: ")[0]
        status = next((child.tag for child in case), "passed")
        verdict[{"failure": "failed", "error": "errored"}.get(status, status)].add(name)
    return dict(verdict)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_the_focus_validator_passes_the_csv_and_parquet_export_of_the_azure_trace(
    azure_worker: WorkerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    worker = azure_worker
    csv_path, parquet_path = tmp_path / "focus.csv", tmp_path / "focus.parquet"
    assert export(worker.settings, "focus", "--window", NOVEMBER_2023, "--url", worker.base,
                  "--output", str(csv_path)) == 0
    assert export(worker.settings, "focus", "--window", NOVEMBER_2023, "--url", worker.base,
                  "--format", "parquet", "--output", str(parquet_path)) == 0

    capsys.readouterr()
    assert export(worker.settings, "focus", "--window", NOVEMBER_2023, "--url", worker.base) == 0
    assert capsys.readouterr().out == csv_path.read_text(encoding="utf-8")  # CSV to stdout

    for path in (csv_path, parquet_path):
        verdict = validate(path, OVERRIDES)
        assert not verdict.get("failed") and not verdict.get("errored"), verdict
        assert verdict["skipped"] == PREVIEW_NAMED_RULES
        assert len(verdict["passed"]) == 129  # every other rule of the 1.0 set

    # The four skipped rules, on a copy with their 1.0-preview column names, pass too.
    rows = read_csv(csv_path)
    preview = tmp_path / "focus-preview-names.csv"
    with preview.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, [*(name if name != "ResourceId" else "ResourceID"
                                           for name in rows[0]), "ChargeType"])
        writer.writeheader()
        for row in rows:
            row["ResourceID"] = row.pop("ResourceId")
            writer.writerow({**row, "ChargeType": row["ChargeCategory"]})
    verdict = validate(preview, None)
    assert set(verdict) == {"passed"} and len(verdict["passed"]) == 133, verdict

    # Every pico-dollar of the trace, once: the sum of BilledCost is the trace's cost.
    expected = sum(group["cost"] for group in totals_by(azure_rows(), "model").values())
    assert sum(Decimal(row["BilledCost"]) for row in rows) == expected
    assert all(row["BilledCost"] == row["EffectiveCost"] == row["ListCost"]
               == row["ContractedCost"] for row in rows)
    assert sum(int(row["x_Requests"]) for row in rows) == len(azure_rows())
    assert {row["BillingPeriodStart"] for row in rows} == {"2023-11-01T00:00:00Z"}
    assert {row["ChargePeriodStart"] for row in rows} == {
        "2023-11-16T18:00:00Z", "2023-11-16T19:00:00Z"}

    # Per day and model, exactly the allocation API's totalCostExact (no GPU: no rounding).
    status, body = worker.get("/model/allocation", window=NOVEMBER_2023, aggregate="model",
                              step="1d")
    assert status == 200, body
    daily: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in rows:
        daily[(row["ChargePeriodStart"][:10], row["x_Model"])] += Decimal(row["BilledCost"])
    assert daily == {(row["start"][:10], name): Decimal(row["totalCostExact"])
                     for group in body["data"] for name, row in group.items()
                     if Decimal(row["totalCostExact"])}

    import pandas

    table = pandas.read_parquet(parquet_path)
    assert len(table) == len(rows)
    assert abs(Decimal(str(table["BilledCost"].sum())) - expected) < CENT


def test_a_month_of_the_demo_trace_reconciles_with_its_own_focus_file(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    """The bundled demo: the trace with its project, app and namespace labels, the demo's GPU
    fleet and the example other costs. Summed per day and model (and per project from the
    Tags), the FOCUS file gives the allocation API's figures."""
    worker = start_worker(settings_for(
        pricing_file=REPO / "costflux/data/pricing-other-costs.example.yaml"))
    worker.wait_ready()
    samples = produce_demo(worker.settings)
    wait_for_requests(worker, len(azure_rows()))
    worker.wait_for(lambda: worker.metric("costflux_gpu_samples_total") == samples, 120,
                    f"ingesting {samples} GPU samples")

    daily, hourly = tmp_path / "daily.csv", tmp_path / "hourly.csv"
    for period, path in (("day", daily), ("hour", hourly)):
        assert export(worker.settings, "focus", "--window", NOVEMBER_2023, "--period", period,
                      "--url", worker.base, "--output", str(path)) == 0
    assert not validate(daily, OVERRIDES).get("failed")

    def served(aggregate: str, step: str) -> dict[tuple[str, str], dict[str, Any]]:
        status, body = worker.get("/model/allocation", window=NOVEMBER_2023,
                                  aggregate=aggregate, step=step)
        assert status == 200, body
        return {(row["start"][:10], name): row for group in body["data"]
                for name, row in group.items()}

    by_model = served("model", "1d")
    usage_kinds = {"tokens", "gpu", "gpu_idle"}
    for path in (daily, hourly):
        rows = read_csv(path)
        assert {r["x_CostComponent"] for r in rows} >= {"tokens", "gpu", "gpu_idle", "storage"}
        for row in rows:  # the kinds' costs (at list prices) make up a token row's ListCost
            if row["x_CostComponent"] == "tokens":
                assert sum(Decimal(row[c]) for c in PART_COSTS) == Decimal(row["ListCost"])
        usage: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for row in rows:
            if row["x_CostComponent"] in usage_kinds:
                usage[(row["ChargePeriodStart"][:10], row["x_Model"])] += Decimal(
                    row["EffectiveCost"])
        want = {key: Decimal(row["totalCostExact"]) for key, row in by_model.items()
                if Decimal(row["totalCostExact"])}
        assert set(usage) == set(want)
        for key, cost in usage.items():
            # Each group's GPU part is rounded to the pico-dollar on its own.
            assert abs(cost - want[key]) <= Decimal("1e-9"), key
            assert cents(cost) == cents(want[key]), key
        if path == daily:  # the whole file: usage, GPU and other costs, every pico-dollar
            by_group = served("model,label:team,label:project,label:app,namespace", "1d")
            assert sum(Decimal(r["BilledCost"]) for r in rows) == sum(
                Decimal(g["totalCostExact"]) + Decimal(g.get("otherCostExact", "0"))
                for g in by_group.values())

    # Per project, read back from the Tags: what reconcile does.
    by_project: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    for row in read_csv(daily):
        if row["x_CostComponent"] in usage_kinds:
            project = json.loads(row["Tags"]).get("project", "__unallocated__")
            name = "__idle__" if row["x_Model"] == "__idle__" else f"{row['x_Model']}/{project}"
            by_project[(row["ChargePeriodStart"][:10], name)] += Decimal(row["BilledCost"])
    want_projects = {key: Decimal(row["totalCostExact"])
                     for key, row in served("model,label:project", "1d").items()}
    assert {key: cents(cost) for key, cost in by_project.items() if cost} == {
        key: cents(cost) for key, cost in want_projects.items() if cost}
    assert {name.rpartition("/")[2] for _, name in by_project} == {
        "assistant", "summarizer", "__idle__"}

    # And `costflux reconcile` itself, on the file: its token rows against tokenCostExact.
    reconciled = subprocess.run(
        [sys.executable, "-m", "costflux", "reconcile", "--report", str(daily), "--format",
         "focus", "--url", worker.base, "--tolerance", "0", "--output", "json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    answer = json.loads(reconciled.stdout)
    assert len(answer["rows"]) >= 2 and Decimal(answer["total"]["costflux"]) > 0
    assert {Decimal(row["difference"]) for row in answer["rows"]} == {Decimal(0)}


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


def produce_demo(settings: Settings) -> int:
    """The bundled trace as ``costflux demo`` assigns it, and the demo fleet's GPU samples;
    the number of samples."""
    models, labels = DEMO_ASSIGNMENT
    assignment = Assignment(models=models, labels=labels)
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions,
                             settings.topic_gpu: settings.topic_partitions})
    events = list(iter_usage_events(AZURE_TRACE, ColumnMapping(), assignment,
                                    id_prefix="azure-conv", limit=None))
    with UsageProducer(producer_config(settings), settings.topic_usage) as producer:
        replay(iter(events), producer, speed=0)
    samples = list(demo_gpu_samples(events))
    with UsageProducer(producer_config(settings), settings.topic_gpu,
                       events_per_message=1) as producer:
        replay(iter(samples), producer, speed=0)
    return len(samples)


def test_export_without_a_worker_says_what_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    from costflux.embedded import free_port

    assert export(Settings(), "focus", "--url", f"http://127.0.0.1:{free_port()}") == 1
    assert "is a worker or `costflux demo` running?" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--output"):  # main prints it and exits 2
        export(Settings(), "focus", "--format", "parquet")

