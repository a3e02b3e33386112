"""GPU cost end to end: GPU samples plus usage events, per-team totals to the nano-dollar.

The expected figures are recomputed here with Decimal and hand-written prices, without
costflux code: each sample's 10 s interval is cut at hour edges by plain overlap arithmetic;
a model's busy GPU cost in an hour is split among the teams that used it by their tokens;
idle time (utilization under 5 %) goes to ``__idle__`` or, with shareIdle, to the same teams.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.integration.expected import azure_rows, event_cost
from tests.integration.test_pipeline import produce_trace
from tests.integration.worker_process import WorkerProcess
from tests.paths import NVML_H100

pytestmark = pytest.mark.integration

HOUR_MS = 3_600_000
START_MS = int(datetime(2023, 11, 16, 18, tzinfo=UTC).timestamp() * 1000)
SPAN = "2023-11-16T18:00:00Z,2023-11-16T20:00:00Z"
FIRST_HOUR = "2023-11-16T18:00:00Z,2023-11-16T19:00:00Z"
TRACE_ROWS = 2000

#: The bundled pricing.yaml's GPU prices, $/hour, written out by hand.
GPU_PRICES = {
    "nvidia-a100-80gb": {"on_demand": "3.5", "spot": "1.2", "reserved_1y": "2.1"},
    "nvidia-a10": {"on_demand": "1.5", "spot": "0.5", "reserved_1y": "0.9"},
    "nvidia-t4": {"on_demand": "0.5", "spot": "0.15", "reserved_1y": "0.3"},
}
#: (node, uuid, gpu_type, tier, labels, utilization offset or None for always 0 %, last ms)
GPUS = [
    ("node-a", "GPU-a0", "nvidia-a100-80gb", "on_demand",
     {"model": "llama-2-70b", "team": "platform", "namespace": "inference"}, 0, None),
    # Stops reporting half-way (its sidecar skips it): its utilization series must go.
    ("node-a", "GPU-a1", "nvidia-a100-80gb", "on_demand",
     {"model": "llama-2-70b", "team": "platform", "namespace": "inference"}, 17,
     START_MS + 90 * 60_000),
    ("node-b", "GPU-b0", "nvidia-a10", "spot",
     {"deployment": "llama-2-7b", "namespace": "inference"}, 31, None),
    # A model nobody sends requests to, at 0 % the whole time: charged to its own labels.
    ("node-b", "GPU-b1", "nvidia-t4", "reserved_1y",
     {"model": "mistral-7b", "team": "research", "namespace": "training"}, None, None),
    # A 2-slice MIG instance with a process on it: no utilization, busy by occupancy.
    ("node-c", "MIG-c0", "nvidia-a100-80gb", "spot",
     {"model": "llama-2-70b", "team": "platform", "namespace": "inference", "pids": "400"},
     None, None),
]
#: MIG instances: uuid -> compute slices of the GPU's 7.
MIG_SLICES = {"MIG-c0": 2}


def recorded_utilizations() -> list[float]:
    """GPU utilization of the real H100 readings (idle, under load, allocated but idle)."""
    lines = NVML_H100.read_text().splitlines()[1:]
    return [float(json.loads(line)["utilization"]["gpu"]) for line in lines]


def gpu_samples() -> list[dict[str, Any]]:
    """10 s samples over two hours, ending 7 s past each 10 s (some straddle hour edges)."""
    utilizations = recorded_utilizations()
    samples = []
    for step in range(1, 2 * 360 + 1):
        end_ms = START_MS + 7_000 + (step - 1) * 10_000
        for index, (node, uuid, gpu_type, tier, labels, offset, last_ms) in enumerate(GPUS):
            if last_ms is not None and end_ms > last_ms:
                continue
            util = 0.0 if offset is None else utilizations[(step + offset) % len(utilizations)]
            sample = {
                "event_id": f"{uuid}-{end_ms}", "ts": end_ms / 1000, "interval_s": 10.0,
                "node": node, "gpu_uuid": uuid, "gpu_index": index % 2,
                "gpu_model": "recorded", "gpu_type": gpu_type, "pricing_tier": tier,
                "utilization_pct": util, "memory_used_bytes": 1 << 30,
                "memory_total_bytes": 80 << 30, "labels": labels,
            }
            if uuid in MIG_SLICES:
                sample["utilization_pct"] = None
                sample["mig"] = {"parent_gpu_uuid": "GPU-c", "profile": "2g.20gb",
                                 "slices": MIG_SLICES[uuid], "slices_total": 7}
            samples.append(sample)
    return samples


def price_of(sample: dict[str, Any]) -> Decimal:
    """$/hour of a sample's GPU, or of its share of the GPU for a MIG instance."""
    price = Decimal(GPU_PRICES[sample["gpu_type"]][sample["pricing_tier"]])
    mig = sample.get("mig")
    return price if mig is None else price * mig["slices"] / mig["slices_total"]


def is_idle(sample: dict[str, Any]) -> bool:
    """Under 5 % utilization; a MIG instance (no utilization) when no process is on it."""
    if sample["utilization_pct"] is None:
        return "pids" not in sample["labels"]
    return bool(sample["utilization_pct"] < 5)


def expected_by_team(
    samples: list[dict[str, Any]], events: list[dict[str, Any]], share_idle: bool
) -> dict[str, dict[str, Decimal]]:
    teams: dict[str, dict[str, Decimal]] = defaultdict(
        lambda: {"token": Decimal(0), "gpu": Decimal(0), "idle": Decimal(0)}
    )
    tokens: dict[tuple[int, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for event in events:
        hour = _hour_of(datetime.fromisoformat(event["ts"].replace("Z", "+00:00")))
        team = event["labels"]["team"]
        teams[team]["token"] += event_cost(event)
        tokens[(hour, event["model"])][team] += event["input_tokens"] + event["output_tokens"]
    # (hour, model) -> busy $, idle $, and the GPU's own team for unused models
    gpu_cost: dict[tuple[int, str], list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), ""])
    for sample in samples:
        end = round(sample["ts"] * 1000)
        start = end - 10_000
        labels = sample["labels"]
        model = labels.get("model") or labels.get("deployment")
        price = price_of(sample)
        for hour in {start - start % HOUR_MS, (end - 1) - (end - 1) % HOUR_MS}:
            if not START_MS <= hour < START_MS + 2 * HOUR_MS:
                continue  # the first interval starts 3 s before the queried span
            overlap = min(end, hour + HOUR_MS) - max(start, hour)
            entry = gpu_cost[(hour, model)]
            entry[1 if is_idle(sample) else 0] += Decimal(overlap) / HOUR_MS * price
            entry[2] = labels.get("team") or "__unallocated__"
    for (hour, model), (busy, idle, own_team) in gpu_cost.items():
        users = tokens.get((hour, model))
        if not users:
            teams[own_team]["gpu"] += busy
            teams[own_team if share_idle else "__idle__"]["idle"] += idle
            continue
        whole = sum(users.values())
        for team, used in users.items():
            teams[team]["gpu"] += busy * used / whole
            if share_idle:
                teams[team]["idle"] += idle * used / whole
        if not share_idle:
            teams["__idle__"]["idle"] += idle
    return dict(teams)


def _hour_of(moment: datetime) -> int:
    ms = int(moment.timestamp()) * 1000
    return ms - ms % HOUR_MS


def produce_gpu_samples(settings: Settings, samples: list[dict[str, Any]]) -> None:
    ensure_topics(settings, {settings.topic_gpu: settings.topic_partitions})
    with UsageProducer(producer_config(settings), settings.topic_gpu,
                       events_per_message=1) as producer:
        for index, sample in enumerate(samples):
            # Re-sent samples (a sidecar's retry) count once.
            for _ in range(2 if index < 50 else 1):
                producer.send_raw(json.dumps(sample).encode(), key=sample["gpu_uuid"].encode())
        # An unpriced GPU goes to dead letters.
        unknown = {**samples[-1], "event_id": "unpriced", "gpu_type": "nvidia-b200"}
        producer.send_raw(json.dumps(unknown).encode(), key=b"GPU-x")


def test_gpu_and_token_cost_per_team_equal_independent_recomputation(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = settings_for(topic_partitions=2, partition_idle_s=2.0)
    samples = gpu_samples()
    events = azure_rows(TRACE_ROWS)
    produce_trace(settings, limit=TRACE_ROWS, speed=0)
    produce_gpu_samples(settings, samples)
    worker = start_worker(settings)
    worker.wait_ready()
    worker.wait_for(lambda: worker.metric("costflux_gpu_samples_total") == len(samples)
                    and worker.metric("costflux_ingest_events_total") == TRACE_ROWS,
                    120, "ingesting every sample and event")

    for share_idle in (False, True):
        expected = expected_by_team(samples, events, share_idle)

        def served(share: bool = share_idle) -> dict[str, dict[str, Any]]:
            status, body = worker.get("/model/allocation", window=SPAN, aggregate="label:team",
                                      shareIdle=str(share).lower())
            assert status == 200, body
            return {name: row for group in body["data"] for name, row in group.items()}

        teams = set(expected)
        worker.wait_for(lambda t=teams: set(served()) == t, 60, f"serving the teams {teams}")
        answer = served()
        for team, want in expected.items():
            got = answer[team]
            total = want["token"] + want["gpu"] + want["idle"]
            assert abs(Decimal(got["totalCostExact"]) - total) < Decimal("1e-9"), (team, got, want)
            assert got["gpuCost"] == pytest.approx(float(want["gpu"]), rel=1e-12, abs=1e-12)
            assert got["idleCost"] == pytest.approx(float(want["idle"]), rel=1e-12, abs=1e-12)
            assert got["tokenCost"] == pytest.approx(float(want["token"]), rel=1e-12, abs=1e-12)

    # The GPU at 0 % for one hour cost exactly one hour at its price, all of it idle.
    status, body = worker.get("/model/gpu", window=FIRST_HOUR, aggregate="model")
    assert status == 200, body
    mistral = body["data"][0]["mistral-7b"]
    assert (mistral["gpuHours"], mistral["idleHours"], mistral["utilizedHours"]) == (1.0, 1.0, 0.0)
    assert mistral["totalCost"] == mistral["idleCost"] == 0.3
    assert mistral["costAtTier"] == {"on_demand": 0.5, "spot": 0.15, "reserved_1y": 0.3}

    # Metrics: GPU cost counters sum to the served GPU cost; the silent GPU has no gauge.
    # Metrics count the finest-window partials, which may be applied after the hourly ones
    # the allocation above read: wait for them rather than race them.
    gpu_total = sum(float(price_of(s) / 360) for s in samples)
    worker.wait_for(
        lambda: worker.metric("llm_gpu_cost_dollars_total") == pytest.approx(gpu_total, rel=1e-9),
        60, "counting every GPU sample's cost in the metrics")
    assert worker.metric("costflux_deadletter_total", reason="unknown_gpu_type") == 1
    assert worker.metric("costflux_duplicates_total") == 50
    status, text = worker.get("/metrics")
    assert 'gpu_uuid="GPU-a0"' in text and 'gpu_uuid="GPU-b1"' in text
    assert 'gpu_uuid="GPU-a1"' not in text
    assert 'gpu_uuid="MIG-c0"' not in text  # no utilization measured: no gauge, not a 0
    # Cost per request and per token over the last hour the watermark closed (18:00-19:00).
    worker.wait_for(lambda: worker.metric("llm_cost_per_request_dollars") > 0, 60,
                    "publishing cost per request")
    _assert_cost_per_request(worker, samples, events)


def _assert_cost_per_request(
    worker: WorkerProcess, samples: list[dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    """Token cost plus all GPU cost (idle too) of the model in the hour, over its requests."""
    in_hour = [e for e in events if e["ts"] < "2023-11-16T19"]
    assert in_hour
    for model in ("llama-2-70b", "llama-2-7b"):
        used = [e for e in in_hour if e["model"] == model]
        tokens = sum(e["input_tokens"] + e["output_tokens"] for e in used)
        gpu = Decimal(0)
        for sample in samples:
            labels = sample["labels"]
            if (labels.get("model") or labels.get("deployment")) != model:
                continue
            end = round(sample["ts"] * 1000)
            overlap = min(end, START_MS + HOUR_MS) - max(end - 10_000, START_MS)
            if overlap > 0:
                gpu += Decimal(overlap) / HOUR_MS * price_of(sample)
        total = sum((event_cost(e) for e in used), Decimal(0)) + gpu
        assert worker.metric("llm_cost_per_request_dollars", model=model) == pytest.approx(
            float(total / len(used)), rel=1e-9
        ), model
        assert worker.metric("llm_cost_per_token_dollars", model=model) == pytest.approx(
            float(total / tokens), rel=1e-9
        ), model


def test_sigkill_and_restart_count_every_gpu_millisecond_exactly_once(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    # The samples span 3.5 h of event time, replayed in seconds.
    settings = settings_for(topic_partitions=4)
    ensure_topics(settings, {settings.topic_gpu: 4})
    # 16 GPUs x 1,250 ten-second samples, a quarter of them idle.
    samples = [
        {"event_id": f"GPU-k{gpu}-{step}", "ts": (START_MS + step * 10_000) / 1000,
         "interval_s": 10.0, "node": f"node-{gpu // 8}", "gpu_uuid": f"GPU-k{gpu}",
         "gpu_index": gpu % 8, "gpu_model": "recorded", "gpu_type": "nvidia-a100-80gb",
         "pricing_tier": ("on_demand", "spot")[gpu % 2], "utilization_pct": float(gpu % 4 * 30),
         "memory_used_bytes": 1, "memory_total_bytes": 2, "labels": {"model": "llama-2-70b"}}
        for step in range(1, 1251) for gpu in range(16)
    ]
    worker = start_worker(settings)
    worker.wait_ready()
    with UsageProducer(producer_config(settings), settings.topic_gpu,
                       events_per_message=1) as producer:
        for index, sample in enumerate(samples):
            producer.send_raw(json.dumps(sample).encode(), key=sample["gpu_uuid"].encode())
            if index == 6_000:
                producer.flush()
                # Kill while it works: at a random point of a flush, or between flushes.
                worker.wait_for(lambda: worker.metric("costflux_gpu_samples_total") > 0, 60,
                                "ingesting GPU samples")
                time.sleep(random.Random(7).uniform(0.0, 5.0))
                worker.kill()
    restarted = start_worker(settings)
    restarted.wait_ready()
    span = "2023-11-16T18:00:00Z,2023-11-16T22:00:00Z"

    def tiers() -> dict[str, Any]:
        status, body = restarted.get("/model/gpu", window=span, aggregate="pricing_tier")
        assert status == 200, body
        return {name: row for group in body["data"] for name, row in group.items()}

    per_tier = len(samples) // 2 * 10 / 3600  # GPU-hours each tier ran
    want = {"on_demand": round(per_tier, 9), "spot": round(per_tier, 9)}
    try:
        restarted.wait_for(lambda: {k: round(r["gpuHours"], 9) for k, r in tiers().items()}
                           == want, 120, "serving every GPU sample once")
    except AssertionError:
        got = {k: r["gpuHours"] for k, r in tiers().items()}
        raise AssertionError(f"GPU-hours {got}, expected {want}") from None
    served = tiers()
    # Exactly once, to the millisecond and to the pico-dollar: a kill double-counted nothing.
    assert served["on_demand"]["gpuHours"] == per_tier
    assert served["on_demand"]["totalCost"] == float(Decimal(per_tier) * Decimal("3.5"))
    assert served["spot"]["totalCost"] == float(Decimal(per_tier) * Decimal("1.2"))
    # On-demand GPUs run at 0 % or 60 %: the 0 % half is idle time.
    assert served["on_demand"]["idleHours"] == per_tier / 2
    assert restarted.metric("costflux_deadletter_total") == 0
