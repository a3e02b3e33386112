"""deployment and cluster as cost dimensions, and what the prompt cache saved, end to end.

A worker prices events of a tiered model (long-context rates above 200,000 prompt tokens) and
an untiered one, all with cached tokens, some naming their deployment in the event's field,
some in a label, some nowhere. Its allocation answers by deployment, cluster and both are
checked against a recomputation written here with Decimal and the prices as written, without
costflux code.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.core.test_money_pricing import CACHE_PRICES
from tests.integration.expected import group_name
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

#: $ per 1K tokens as CACHE_PRICES writes them: (input, output, cached input), base and above
#: the tier.
RATES = {
    "tiered": (("0.003", "0.015", "0.0003"), ("0.006", "0.0225", "0.0006")),
    "flat": (("0.0025", "0.01", "0.00125"), ("0.0025", "0.01", "0.00125")),
}
START = datetime(2024, 5, 1, 10, tzinfo=UTC)
SPAN = "2024-05-01T10:00:00Z,2024-05-01T12:00:00Z"
EVENTS = 400


def rates(event: dict[str, Any]) -> tuple[Decimal, ...]:
    base, tier = RATES[event["model"]]
    return tuple(Decimal(r) / 1000 for r in (tier if event["input_tokens"] > 200_000 else base))


def cost(event: dict[str, Any]) -> Decimal:
    rate_in, rate_out, rate_cached = rates(event)
    cached = event["cached_input_tokens"]
    return ((event["input_tokens"] - cached) * rate_in + cached * rate_cached
            + event["output_tokens"] * rate_out)


def saving(event: dict[str, Any]) -> Decimal:
    rate_in, _, rate_cached = rates(event)
    return event["cached_input_tokens"] * (rate_in - rate_cached)


def usage_events() -> list[dict[str, Any]]:
    rng = random.Random(20240501)
    events = []
    for index in range(EVENTS):
        model = ("tiered", "flat")[index % 2]
        prompt = rng.randint(200_001, 260_000) if index % 5 == 0 else rng.randint(1, 200_000)
        labels = {"team": ("search", "ads")[index % 3 % 2]}
        cluster = ("us-east-1", "eu-west-1", "")[index % 7 % 3]
        if cluster:
            labels["cluster"] = cluster
        event: dict[str, Any] = {
            "event_id": f"dim-{index}",
            "ts": (START + timedelta(seconds=15 * index)).isoformat().replace("+00:00", "Z"),
            "model": model, "input_tokens": prompt, "output_tokens": rng.randint(0, 4000),
            "cached_input_tokens": rng.randint(0, prompt), "labels": labels,
        }
        where = index // 2 % 4  # the deployment: in the field, a label, both, or nowhere
        if where in (0, 2):
            event["deployment"] = f"{model}-prod"
        if where in (1, 2):
            labels["deployment"] = f"{model}-canary"  # the field wins when both are there
        events.append(event)
    return events


def expected_by(events: list[dict[str, Any]], aggregate: str) -> dict[str, tuple[Any, ...]]:
    groups: dict[str, list[Any]] = defaultdict(lambda: [Decimal(0), 0, 0, Decimal(0)])
    for event in events:
        group = groups[group_name(event, aggregate)]
        group[0] += cost(event)
        group[1] += 1
        group[2] += event["cached_input_tokens"]
        group[3] += saving(event)
    return {name: tuple(values) for name, values in groups.items()}


def served_by(worker: WorkerProcess, aggregate: str) -> dict[str, tuple[Any, ...]]:
    return {name: (Decimal(row["totalCostExact"]), row["requests"], row["cachedInputTokens"],
                   Decimal(row["cacheSavingsExact"]))
            for name, row in worker.allocation(SPAN, aggregate).items()}


def test_deployment_cluster_and_cache_savings_equal_a_recomputation(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    (tmp_path / "pricing.yaml").write_text(CACHE_PRICES)
    settings = settings_for(pricing_file=tmp_path / "pricing.yaml")
    events = usage_events()
    # Produced before the worker starts, one event per message, so that every partition's
    # first flush spans several offsets. (A flush of a partition's offset 0 alone adds 0 to
    # the version of the serving-view shards it writes: one that another partition wrote
    # first at version 0 refuses it, and those rows stay missing until that shard is
    # written again. That is the serving view's, not this test's, to fix.)
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for event in events:
            producer.send(event)
    worker = start_worker(settings)
    worker.wait_ready()
    worker.wait_for(lambda: sum(r[1] for r in served_by(worker, "model").values()) == EVENTS,
                    120, f"serving {EVENTS} requests")

    assert {name for name in served_by(worker, "deployment")} == {
        "tiered-prod", "flat-prod", "tiered-canary", "flat-canary", "__unallocated__"}
    for aggregate in ("model", "deployment", "cluster", "cluster,deployment",
                      "label:deployment,label:team", "model,cluster"):
        assert served_by(worker, aggregate) == expected_by(events, aggregate), aggregate
    # The tier matters: the savings of prompts above 200,000 tokens are at the tier's rates.
    above = [e for e in events if e["model"] == "tiered" and e["input_tokens"] > 200_000]
    assert above and sum(map(saving, above)) > sum(
        e["cached_input_tokens"] * Decimal("0.0027") / 1000 for e in above)

    for aggregate in ("node", "pod,model"):
        status, body = worker.get("/model/allocation", window=SPAN, aggregate=aggregate)
        assert status == 400
        assert "does not record" in body["message"] and "cluster" in body["message"]
