"""The whole bill through the stream: one request of each billable kind, priced by a real
worker, against a hand computation from the providers' published rates.

Rates (USD per million tokens unless said otherwise), as published when written:
- Anthropic Claude Sonnet 4: input 3, output 15, 5-minute cache write 3.75, 1-hour cache
  write 6, cache read 0.30; web search 10 per 1,000 searches. Source:
  https://docs.anthropic.com/en/docs/about-claude/pricing ("Model pricing", "Prompt caching"
  and "Web search" tables).
- OpenAI o3: input 2, cached input 0.50, output 8 (reasoning tokens are billed as output);
  the Batch API costs half. Source: https://platform.openai.com/docs/pricing ("Standard" and
  "Batch" tables).
- OpenAI gpt-5: input 1.25, cached input 0.125, output 10; priority processing input 2.50,
  cached input 0.25, output 20. Source: https://platform.openai.com/docs/pricing ("Standard"
  and "Priority" tables).
- OpenAI gpt-realtime: text input 4, text output 16, audio input 32, audio output 64.
  Source: https://platform.openai.com/docs/pricing ("Audio tokens" table).
A contract takes 10 % off every Anthropic model (a made-up negotiated discount).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
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
  claude-sonnet-4:
    provider: anthropic
    input_per_1m: 3
    output_per_1m: 15
    cached_input_per_1m: 0.30
    cache_write_input_per_1m: 3.75
    cache_write_1h_input_per_1m: 6
    per_web_search_call: 0.01
  o3:
    provider: openai
    input_per_1m: 2
    cached_input_per_1m: 0.50
    output_per_1m: 8
    batch: {discount_pct: 50}
  gpt-5:
    provider: openai
    input_per_1m: 1.25
    cached_input_per_1m: 0.125
    output_per_1m: 10
    service_tiers:
      priority: {input_per_1m: 2.50, cached_input_per_1m: 0.25, output_per_1m: 20}
  gpt-realtime:
    provider: openai
    input_per_1m: 4
    output_per_1m: 16
    audio_input_per_1m: 32
    audio_output_per_1m: 64
contracts:
  - provider: anthropic
    discount_pct: 10
"""
SPAN = "2025-09-01T10:00:00Z,2025-09-01T11:00:00Z"
M = Decimal(1_000_000)


def event(event_id: str, model: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "ts": "2025-09-01T10:15:00Z", "model": model,
            "labels": {"team": event_id}, **fields}


#: One request of each kind, and its cost by hand: (event, list cost, cost paid).
REQUESTS: list[tuple[dict[str, Any], Decimal, Decimal]] = [
    # Anthropic: 1,000 uncached input tokens, 2,000 read from cache, 3,000 written for 5
    # minutes and 4,000 for an hour; 500 output; and 2 web searches. 10 % off by contract.
    (event("anthropic-cache", "claude-sonnet-4", input_tokens=10_000, output_tokens=500,
           cached_input_tokens=2_000, cache_write_input_tokens=3_000,
           cache_write_1h_input_tokens=4_000, web_search_calls=2),
     (1_000 * Decimal(3) + 2_000 * Decimal("0.30") + 3_000 * Decimal("3.75")
      + 4_000 * Decimal(6) + 500 * Decimal(15)) / M + 2 * Decimal("0.01"),
     Decimal(0)),
    # o3: 1,200 output tokens of which 1,000 reasoning, all billed at the output rate.
    (event("openai-reasoning", "o3", input_tokens=800, output_tokens=1_200,
           reasoning_tokens=1_000),
     (800 * Decimal(2) + 1_200 * Decimal(8)) / M, Decimal(0)),
    # o3 through the Batch API: half of every rate.
    (event("openai-batch", "o3", input_tokens=5_000, output_tokens=700, batch=True),
     (5_000 * Decimal(1) + 700 * Decimal(4)) / M, Decimal(0)),
    # gpt-5 at the priority tier, 300 of its 900 input tokens from cache.
    (event("openai-priority", "gpt-5", input_tokens=900, output_tokens=100,
           cached_input_tokens=300, service_tier="priority"),
     (600 * Decimal("2.50") + 300 * Decimal("0.25") + 100 * Decimal(20)) / M, Decimal(0)),
    # gpt-realtime: 700 of 1,000 input tokens are audio, 400 of 600 output tokens.
    (event("openai-audio", "gpt-realtime", input_tokens=1_000, output_tokens=600,
           audio_input_tokens=700, audio_output_tokens=400),
     (300 * Decimal(4) + 700 * Decimal(32) + 200 * Decimal(16) + 400 * Decimal(64)) / M,
     Decimal(0)),
]
PICO = Decimal("0.000000000001")


def paid(team: str, list_cost: Decimal) -> Decimal:
    """The contract: 10 % off the Anthropic request, rounded half to even to the pico-dollar."""
    if team != "anthropic-cache":
        return list_cost
    return list_cost - (list_cost * Decimal("0.10")).quantize(PICO, rounding=ROUND_HALF_EVEN)


def worker_after(events: list[dict[str, Any]], settings_for: Callable[..., Settings],
                 start_worker: Callable[[Settings], WorkerProcess], tmp_path: Path
                 ) -> WorkerProcess:
    """A ready worker pricing by PRICES, started once ``events`` (one a message) are in."""
    (tmp_path / "pricing.yaml").write_text(PRICES)
    settings = settings_for(pricing_file=tmp_path / "pricing.yaml")
    ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
    with UsageProducer(producer_config(settings), settings.topic_usage,
                       events_per_message=1) as producer:
        for usage in events:
            producer.send(usage)
    worker = start_worker(settings)
    worker.wait_ready()
    return worker


def test_each_billable_kind_priced_through_the_stream_equals_the_published_rates(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    worker = worker_after([usage for usage, _, _ in REQUESTS], settings_for, start_worker,
                          tmp_path)
    worker.wait_for(lambda: sum(r["requests"] for r in worker.allocation(
        SPAN, "label:team").values()) == len(REQUESTS), 120, "counting every request")

    rows = worker.allocation(SPAN, "label:team")
    for usage, list_cost, _ in REQUESTS:
        row = rows[usage["labels"]["team"]]
        assert Decimal(row["listCostExact"]) == list_cost, usage["event_id"]
        assert Decimal(row["totalCostExact"]) == paid(usage["event_id"], list_cost)
        assert Decimal(row["effectiveCostExact"]) == Decimal(row["totalCostExact"])
    anthropic = rows["anthropic-cache"]
    assert Decimal(anthropic["contractDiscountExact"]) == Decimal("0.006635")
    assert Decimal(anthropic["cacheWriteCostExact"]) == (
        3_000 * Decimal("3.75") + 4_000 * Decimal(6)) / M
    assert Decimal(anthropic["webSearchCostExact"]) == Decimal("0.02")
    assert (anthropic["cacheWriteInputTokens"], anthropic["cacheWrite1hInputTokens"],
            anthropic["webSearchCalls"], anthropic["cachedInputTokens"]) == (3_000, 4_000, 2,
                                                                            2_000)
    reasoning = rows["openai-reasoning"]
    assert (reasoning["reasoningTokens"], Decimal(reasoning["reasoningCostExact"])) == (
        1_000, 1_000 * Decimal(8) / M)
    assert rows["openai-batch"]["batchRequests"] == 1
    assert rows["openai-priority"]["priorityRequests"] == 1
    audio = rows["openai-audio"]
    assert (audio["audioInputTokens"], audio["audioOutputTokens"]) == (700, 400)
    assert Decimal(audio["audioCostExact"]) == (700 * Decimal(32) + 400 * Decimal(64)) / M
    assert Decimal(audio["textTokenCostExact"]) == (300 * Decimal(4) + 200 * Decimal(16)) / M
    # By model, the kinds add up to the total paid, to the pico-dollar.
    total = sum((paid(u["event_id"], c) for u, c, _ in REQUESTS), Decimal(0))
    assert sum((Decimal(r["totalCostExact"]) for r in worker.allocation(SPAN, "model").values()),
               Decimal(0)) == total


def test_parts_larger_than_their_totals_and_unknown_tiers_are_dead_lettered(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path,
) -> None:
    from tests.integration.test_faults import read_deadletters

    bad = [
        event("writes-past-input", "claude-sonnet-4", input_tokens=100, output_tokens=1,
              cached_input_tokens=60, cache_write_input_tokens=50),
        event("reasoning-past-output", "o3", input_tokens=1, output_tokens=10,
              reasoning_tokens=11),
        event("unknown-tier", "gpt-5", input_tokens=1, output_tokens=1, service_tier="turbo"),
    ]
    worker = worker_after([*bad, REQUESTS[0][0]], settings_for, start_worker, tmp_path)
    records = read_deadletters(worker.settings, len(bad))
    assert sorted(r["reason"] for r in records) == ["invalid_value"] * 3
    details = " ".join(r["detail"] for r in records)
    assert "exceeds input_tokens" in details and "exceeds output_tokens" in details
    assert "service_tier" in details
    worker.wait_for(lambda: sum(r["requests"] for r in worker.allocation(
        SPAN, "model").values()) == 1, 60, "counting the good request")
