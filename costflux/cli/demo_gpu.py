"""The demo's GPU fleet: simulated GPU samples whose utilization follows the replayed trace.

The demo serves the self-hosted Llama models from three simulated GPUs. A real sidecar reads
utilization from NVML; here it is the share of an assumed decode throughput that the trace's
tokens fill in each 10-second interval, so the GPUs are busy when the trace is and idle in
its gaps, and the allocation table shows GPU cost, idle cost and who used the GPUs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from costflux.core.trace import parse_trace_time

__all__ = ["DEMO_FLEET", "demo_gpu_samples"]

#: (node, GPU UUID, gpu_type, pricing tier, model served)
DEMO_FLEET = (
    ("demo-node-1", "GPU-demo-0000", "nvidia-a100-80gb", "on_demand", "llama-2-70b"),
    ("demo-node-1", "GPU-demo-0001", "nvidia-a100-80gb", "on_demand", "llama-2-70b"),
    ("demo-node-2", "GPU-demo-0002", "nvidia-a10", "spot", "llama-2-7b"),
)
#: Assumed tokens (prompt + generated) per second one GPU of the deployment handles at 100 %.
_TOKENS_PER_GPU_SECOND = {"llama-2-70b": 2_000, "llama-2-7b": 6_000}
_INTERVAL_S = 10


def demo_gpu_samples(events: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """One GPU sample per GPU per 10 s over the events' time span, in event-time order."""
    tokens: dict[tuple[str, int], int] = defaultdict(int)  # (model, interval end) -> tokens
    first = last = None
    for event in events:
        seconds = int(parse_trace_time(event["ts"]).timestamp())
        end = seconds - seconds % _INTERVAL_S + _INTERVAL_S
        tokens[(event["model"], end)] += event["input_tokens"] + event["output_tokens"]
        first = end if first is None else min(first, end)
        last = end if last is None else max(last, end)
    if first is None or last is None:
        return
    gpus_per_model: dict[str, int] = defaultdict(int)
    for *_, model in DEMO_FLEET:
        gpus_per_model[model] += 1
    for end in range(first, last + _INTERVAL_S, _INTERVAL_S):
        stamp = datetime.fromtimestamp(end, tz=UTC).isoformat().replace("+00:00", "Z")
        for index, (node, uuid, gpu_type, tier, model) in enumerate(DEMO_FLEET):
            capacity = _TOKENS_PER_GPU_SECOND[model] * _INTERVAL_S * gpus_per_model[model]
            busy = min(100.0, round(100 * tokens.get((model, end), 0) / capacity, 1))
            yield {
                "event_id": f"{uuid}-{end}", "ts": stamp, "interval_s": float(_INTERVAL_S),
                "node": node, "gpu_uuid": uuid, "gpu_index": index % 2,
                "gpu_model": "simulated", "gpu_type": gpu_type, "pricing_tier": tier,
                "utilization_pct": busy, "memory_used_bytes": 60 << 30,
                "memory_total_bytes": 80 << 30,
                "labels": {"model": model, "namespace": "ml-prod", "team": "platform"},
            }
