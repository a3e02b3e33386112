"""Savings advice end to end, every figure recomputed here from the raw samples and events.

Two hours of GPU samples (10 s, aligned, integer utilizations) and usage events go through a
real broker, Redis and worker; ``/api/advice`` and ``costflux advise`` must give the figures
this file recomputes with fractions and hand-written prices, following the rules the README
states: per hour and pool keep ceil(busy / (70 % x hour)) GPUs (at least 1) and scale down
the rest, on-demand first; batching takes 30 % off a pool whose model has many small requests
on lightly used GPUs; the on-demand GPUs left in every hour are reserved, the rest go spot;
half of a short-output model's cost is repriced at the closest cheaper model in use; the
prompt cache's saving is what cached tokens would have cost at the input rate.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from costflux.settings import Settings
from tests.integration.test_alerting import produce
from tests.integration.test_gpu_cost import produce_gpu_samples
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
START_MS = int(datetime(2023, 11, 16, 18, tzinfo=UTC).timestamp() * 1000)
WINDOW = "2023-11-16T18:00:00Z,2023-11-16T20:00:00Z"
MONTH_DAYS = 31  # set in the advice file: a month is 372 times the two hours measured
#: $/1K tokens: input, cached input, output (gpt-4 gets a cache price for this test)
TOKEN_PRICES = {
    "llama-2-70b": (Fraction("0.0008"), Fraction("0.0008"), Fraction("0.0016")),
    "llama-2-7b": (Fraction("0.0001"), Fraction("0.0001"), Fraction("0.0002")),
    "gpt-4": (Fraction("0.03"), Fraction("0.015"), Fraction("0.06")),
}
#: $/hour: on_demand, spot, reserved_1y
GPU_PRICES = {"nvidia-a100-80gb": (Fraction("3.5"), Fraction("1.2"), Fraction("2.1")),
              "nvidia-a10": (Fraction("1.5"), Fraction("0.5"), Fraction("0.9"))}
TIERS = ("on_demand", "spot", "reserved_1y")
#: uuid, gpu_type, tier, model, utilization range in the first hour, in the second
GPUS = [
    ("GPU-0", "nvidia-a100-80gb", "on_demand", "llama-2-70b", (20, 50), (60, 90)),
    ("GPU-1", "nvidia-a100-80gb", "on_demand", "llama-2-70b", (0, 10), (30, 60)),
    ("GPU-2", "nvidia-a100-80gb", "on_demand", "llama-2-70b", (0, 10), (0, 10)),
    ("GPU-3", "nvidia-a10", "spot", "llama-2-7b", (10, 30), (10, 30)),
]
PRICING = """\
gpu_pricing:
  nvidia-a100-80gb: {on_demand: 3.5, spot: 1.2, reserved_1y: 2.1}
  nvidia-a10: {on_demand: 1.5, spot: 0.5, reserved_1y: 0.9}
model_costs:
  llama-2-70b: {input_tokens: 0.0008, output_tokens: 0.0016}
  llama-2-7b: {input_tokens: 0.0001, output_tokens: 0.0002}
  gpt-4: {input_tokens: 0.03, output_tokens: 0.06, cached_input_tokens: 0.015}
"""


def samples() -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for step in range(1, 2 * 360 + 1):
        end_ms = START_MS + step * 10_000
        hour = (end_ms - 1 - START_MS) // HOUR_MS
        for index, (uuid, gpu_type, tier, model, first, second) in enumerate(GPUS):
            low, high = (first, second)[hour]
            out.append({
                "event_id": f"{uuid}-{end_ms}", "ts": end_ms / 1000, "interval_s": 10.0,
                "node": f"node-{index // 2}", "gpu_uuid": uuid, "gpu_index": index % 2,
                "gpu_model": "recorded", "gpu_type": gpu_type, "pricing_tier": tier,
                "utilization_pct": float(rng.randint(low, high)),
                "memory_used_bytes": 1 << 30, "memory_total_bytes": 80 << 30,
                "labels": {"model": model, "team": "platform", "namespace": "inference"},
            })
    return out


def events() -> list[dict[str, Any]]:
    """gpt-4 with short outputs and cached prompts, llama-2-7b small and frequent (1.2/s),
    llama-2-70b long."""
    rng = random.Random(11)
    out = []
    for second in range(0, 2 * 3600, 3):
        stamp = datetime.fromtimestamp(START_MS / 1000 + second + 1, tz=UTC)
        ts = stamp.isoformat().replace("+00:00", "Z")
        prompt = rng.randint(500, 3000)
        out.append({"event_id": f"g{second}", "ts": ts, "model": "gpt-4",
                    "input_tokens": prompt, "cached_input_tokens": rng.randint(0, prompt),
                    "output_tokens": rng.randint(20, 200), "labels": {"team": "search"}})
        out.append({"event_id": f"l{second}", "ts": ts, "model": "llama-2-70b",
                    "input_tokens": rng.randint(1000, 4000), "output_tokens": 600,
                    "labels": {"team": "chat"}})
        for k in range(4):
            out.append({"event_id": f"s{second}-{k}", "ts": ts, "model": "llama-2-7b",
                        "input_tokens": rng.randint(100, 400),
                        "output_tokens": rng.randint(50, 150), "labels": {"team": "ads"}})
    return out


def expected_advice(gpu_samples: list[dict[str, Any]], usage: list[dict[str, Any]]) -> dict[
        tuple[str, str], tuple[Fraction, Fraction]]:
    """(kind, target) -> (monthly before, monthly after) in dollars."""
    factor = Fraction(MONTH_DAYS * 24 * HOUR_MS, 2 * HOUR_MS)
    # (model, gpu_type) -> hour -> [gpu_ms, busy_ms, $ at its tier, on-demand ms]
    pools: dict[tuple[str, str], dict[int, list[Any]]] = defaultdict(
        lambda: defaultdict(lambda: [0, 0, Fraction(0), 0]))
    for sample in gpu_samples:
        end_ms = round(sample["ts"] * 1000)
        hour = (end_ms - 1 - START_MS) // HOUR_MS
        prices = dict(zip(TIERS, GPU_PRICES[sample["gpu_type"]], strict=True))
        entry = pools[(sample["labels"]["model"], sample["gpu_type"])][hour]
        entry[0] += 10_000
        entry[1] += 100 * int(sample["utilization_pct"])  # 10 s x utilization, in ms
        entry[2] += Fraction(10_000, HOUR_MS) * prices[sample["pricing_tier"]]
        entry[3] += 10_000 if sample["pricing_tier"] == "on_demand" else 0
    use: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for event in usage:
        price_in, price_cached, price_out = TOKEN_PRICES[event["model"]]
        cached = event.get("cached_input_tokens", 0)
        totals = use[event["model"]]
        totals["cost"] += ((event["input_tokens"] - cached) * price_in + cached * price_cached
                           + event["output_tokens"] * price_out) / 1000
        totals["saved"] += cached * (price_in - price_cached) / 1000
        for field in ("input_tokens", "output_tokens"):
            totals[field] += event[field]
        totals["cached"] += cached
        totals["requests"] += 1

    out: dict[tuple[str, str], tuple[Fraction, Fraction]] = {}
    for (model, gpu_type), by_hour in pools.items():
        target = f"{model} on {gpu_type}"
        on_demand, spot, reserved = GPU_PRICES[gpu_type]
        cost = sum(e[2] for e in by_hour.values())
        kept_cost, kept_od_gpus = Fraction(0), {}
        for hour, (gpu_ms, busy_ms, dollars, od_ms) in by_hour.items():
            needed = max(1, -(-busy_ms * 100 // (70 * HOUR_MS)))
            surplus = max(0, gpu_ms - needed * HOUR_MS)
            assert surplus <= od_ms or od_ms == 0  # these pools are all on-demand or all spot
            kept_cost += dollars * (gpu_ms - surplus) / gpu_ms
            kept_od_gpus[hour] = Fraction(max(0, od_ms - surplus), HOUR_MS)
        if kept_cost < cost:
            out[("rightsize", target)] = (cost * factor, kept_cost * factor)
        totals = use[model]
        gpu_ms = sum(e[0] for e in by_hour.values())
        busy_ms = sum(e[1] for e in by_hour.values())
        batch = (busy_ms * 2 < gpu_ms
                 and totals["input_tokens"] + totals["output_tokens"] < 1000 * totals["requests"]
                 and totals["requests"] >= Fraction(1, 2) * 7200)
        if batch:
            out[("batching", target)] = (kept_cost * factor, kept_cost * factor * Fraction(7, 10))
            kept_od_gpus = {h: g * Fraction(7, 10) for h, g in kept_od_gpus.items()}
        baseline = min(int(g) for g in kept_od_gpus.values()) if len(kept_od_gpus) == 2 else 0
        if baseline:
            out[("reserved", target)] = (2 * baseline * on_demand * factor,
                                         2 * baseline * reserved * factor)
        burst = sum(kept_od_gpus.values()) - 2 * baseline
        if burst:
            out[("spot", target)] = (burst * on_demand * factor, burst * spot * factor)

    for model, totals in use.items():
        if totals["output_tokens"] > 300 * totals["requests"]:
            continue

        def base(prices: tuple[Fraction, Fraction, Fraction], t: dict[str, Any] = totals) -> Any:
            price_in, price_cached, price_out = prices
            return ((t["input_tokens"] - t["cached"]) * price_in + t["cached"] * price_cached
                    + t["output_tokens"] * price_out) / 1000

        own = base(TOKEN_PRICES[model])
        cheaper = [(base(TOKEN_PRICES[m]), m) for m in use if base(TOKEN_PRICES[m]) < own]
        if cheaper:
            cost, target_model = max(cheaper)
            moved = totals["cost"] / 2
            out[("routing", f"{model} -> {target_model}")] = (
                moved * factor, moved * cost / own * factor)
    for model, totals in use.items():
        if totals["saved"]:
            out[("prompt_cache", model)] = ((totals["cost"] + totals["saved"]) * factor,
                                            totals["cost"] * factor)
    return out


def test_advice_figures_equal_an_independent_recomputation(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    pricing, advice_file = tmp_path / "pricing.yaml", tmp_path / "advice.yaml"
    pricing.write_text(PRICING)
    advice_file.write_text(f"month_days: {MONTH_DAYS}\ntarget_utilization_pct: 70\n")
    settings = settings_for(pricing_file=pricing, advice_file=advice_file, partition_idle_s=2.0)
    gpu_samples, usage = samples(), events()
    produce(settings, usage)
    produce_gpu_samples(settings, gpu_samples)
    worker = start_worker(settings)
    worker.wait_ready()
    worker.wait_for(lambda: worker.metric("costflux_gpu_samples_total") == len(gpu_samples)
                    and worker.metric("costflux_ingest_events_total") == len(usage),
                    120, "ingesting every sample and event")
    expected = expected_advice(gpu_samples, usage)
    kinds = {kind for kind, _ in expected}
    assert kinds == {"rightsize", "batching", "reserved", "spot", "routing", "prompt_cache"}

    def served() -> dict[tuple[str, str], tuple[Fraction, Fraction]]:
        status, body = worker.get("/api/advice", window=WINDOW)
        assert status == 200, body
        data = body["data"]
        return {(a["kind"], a["target"]): (Fraction(a["monthlyBeforeExact"]),
                                           Fraction(a["monthlyAfterExact"]))
                for a in [*data["advice"], *data["cacheAchieved"]]}

    worker.wait_for(lambda: served().keys() == expected.keys(), 60, "advising on every pool")
    for key, (before, after) in served().items():
        want_before, want_after = expected[key]
        assert abs(before - want_before) < Fraction(1, 10**9), (key, float(want_before))
        assert abs(after - want_after) < Fraction(1, 10**9), (key, float(want_after))

    # The CLI prints the ROI table from the same answer.
    run = subprocess.run(
        [sys.executable, "-m", "costflux", "advise", "--url",
         f"http://127.0.0.1:{settings.http_port}", "--window", WINDOW, "--format", "json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    roi = {row["item"]: row for row in json.loads(run.stdout)["roi"]}
    saving = sum(before - after for key, (before, after) in expected.items()
                 if key[0] != "prompt_cache")
    assert abs(Fraction(roi["Total"]["monthlySavingExact"]) - saving) < Fraction(1, 10**9)
    status, body = worker.get("/api/advice", window="yesterday,today")
    assert status == 400 and "window" in body["message"]
