"""What the semantic cache saved, measured end to end by a real worker.

Usage events as ``costflux cache`` publishes them - misses, hits (``cache_hit: true``, with the
cached response's tokens) and events without the field - for two models, one of which changes
price in the middle of the span, reach a worker on the embedded broker. Its Prometheus
counters and its allocation API are checked against a recomputation written here with
Decimal and the prices as written, without costflux code: hits are requests with no cost and
no tokens, and their tokens priced at their own event time are the savings.
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
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

PRICES = """
model_costs:
  gpt-4o:
    input_per_1m: 2.5
    output_per_1m: 10
    cached_input_per_1m: 1.25
    changes:
      - effective_from: "2024-05-01T10:30:00Z"
        input_per_1m: 5
        output_per_1m: 15
        cached_input_per_1m: 2.5
  llama-3-8b:
    input_tokens: 0.0002
    output_tokens: 0.0004
"""
CHANGE = datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
START = datetime(2024, 5, 1, 10, tzinfo=UTC)
SPAN = "2024-05-01T10:00:00Z,2024-05-01T11:00:00Z"
EVENTS = 360
TEAMS = ("search", "ads", "")


def rates(model: str, moment: datetime) -> tuple[Decimal, Decimal, Decimal]:
    """$ per token (input, output, cached input), as PRICES writes them."""
    if model == "llama-3-8b":
        return Decimal("0.0002") / 1000, Decimal("0.0004") / 1000, Decimal("0.0002") / 1000
    per_1m = ("2.5", "10", "1.25") if moment < CHANGE else ("5", "15", "2.5")
    rate_in, rate_out, rate_cached = (Decimal(r) / 10**6 for r in per_1m)
    return rate_in, rate_out, rate_cached


def price(event: dict[str, Any]) -> Decimal:
    moment = datetime.fromisoformat(event["ts"].replace("Z", "+00:00"))
    rate_in, rate_out, rate_cached = rates(event["model"], moment)
    cached = event.get("cached_input_tokens", 0)
    return ((event["input_tokens"] - cached) * rate_in + cached * rate_cached
            + event["output_tokens"] * rate_out)


def usage_events() -> list[dict[str, Any]]:
    rng = random.Random(8)
    events = []
    for index in range(EVENTS):
        moment = START + timedelta(seconds=10 * index)  # 10:00:00 .. 10:59:50
        team = TEAMS[index % 3]
        event: dict[str, Any] = {
            "event_id": f"sc-{index}",
            "ts": moment.isoformat().replace("+00:00", "Z"),
            "model": ("gpt-4o", "llama-3-8b")[index % 2 if index % 7 else 0],
            "input_tokens": rng.randint(1, 20_000),
            "output_tokens": rng.randint(0, 2_000),
            "labels": {"team": team, "app": "chat"} if team else {"app": "chat"},
        }
        if index % 4 == 1:
            event["cached_input_tokens"] = rng.randint(0, event["input_tokens"])
        kind = rng.random()
        if kind < 0.45:
            event["cache_hit"] = True
        elif kind < 0.7:
            event["cache_hit"] = False  # else: no field, as before the semantic cache
        events.append(event)
    return events


def expected_by_model_team(events: list[dict[str, Any]]) -> dict[tuple[str, str], list[Any]]:
    """(model, team) -> [cost, input, output, cached, requests, hits, saved]."""
    groups: dict[tuple[str, str], list[Any]] = defaultdict(
        lambda: [Decimal(0), 0, 0, 0, 0, 0, Decimal(0)])
    for event in events:
        group = groups[(event["model"], event["labels"].get("team", ""))]
        group[4] += 1
        if event.get("cache_hit"):
            group[5] += 1
            group[6] += price(event)
        else:
            group[0] += price(event)
            group[1] += event["input_tokens"]
            group[2] += event["output_tokens"]
            group[3] += event.get("cached_input_tokens", 0)
    return dict(groups)


def test_cache_savings_and_hits_equal_a_recomputation_from_the_events(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    (tmp_path / "pricing.yaml").write_text(PRICES)
    settings = settings_for(pricing_file=tmp_path / "pricing.yaml")
    events = usage_events()
    expected = expected_by_model_team(events)
    hits = [e for e in events if e.get("cache_hit")]
    assert 100 < len(hits) < 250
    assert {e["ts"] < "2024-05-01T10:30" for e in hits if e["model"] == "gpt-4o"} == {True, False}
    # Produced before the worker starts, one per message: each partition's first flush spans
    # several offsets (see tests/integration/test_cost_dimensions.py for why that matters).
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for event in events:
            producer.send(event)
    worker = start_worker(settings)
    worker.wait_ready()
    worker.wait_for(lambda: worker.metric("llm_requests_total") == EVENTS and sum(
        row["requests"] for row in worker.allocation(SPAN, "model").values()) == EVENTS,
        120, f"counting {EVENTS} requests")

    # Prometheus: floats summed increment by increment, so equal to a relative 1e-9.
    for (model, team), (cost, tokens_in, tokens_out, cached, requests, hit_count,
                        saved) in expected.items():
        labels = {"model": model, "team": team, "app": "chat"}
        assert worker.metric("llm_cache_hits_total", **labels) == hit_count, labels
        assert worker.metric("llm_cache_savings_dollars_total", **labels) == pytest.approx(
            float(saved), rel=1e-9, abs=1e-15), labels
        assert worker.metric("llm_requests_total", **labels) == requests, labels
        assert worker.metric("llm_request_cost_dollars_total", **labels) == pytest.approx(
            float(cost), rel=1e-9, abs=1e-15), labels
        for direction, count in (("input", tokens_in), ("output", tokens_out),
                                 ("cached_input", cached)):
            assert worker.metric("llm_tokens_total", **labels, direction=direction) == count

    # The allocation API: exact, to the pico-dollar.
    served = {
        tuple(name.split("/")): [Decimal(row["totalCostExact"]), row["inputTokens"],
                                 row["outputTokens"], row["cachedInputTokens"], row["requests"],
                                 row["semanticCacheHits"],
                                 Decimal(row["semanticCacheSavingsExact"])]
        for name, row in worker.allocation(SPAN, "model,label:team").items()
    }
    assert served == {(model, team or "__unallocated__"): sums
                      for (model, team), sums in expected.items()}
    by_team = worker.allocation(SPAN, "label:team")
    for team in ("search", "ads"):
        saved = sum((price(e) for e in hits if e["labels"].get("team") == team), Decimal(0))
        assert Decimal(by_team[team]["semanticCacheSavingsExact"]) == saved
        assert by_team[team]["semanticCacheSavings"] == pytest.approx(float(saved), rel=1e-12)
