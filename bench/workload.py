"""The benchmark's events and the pricing the baselines apply to them.

Shared by the orchestrator (which produces the events) and by the baseline consumers (which
price them), so every path sums the same events at the same prices.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

#: Pico-dollars per token: the bundled costflux/data/pricing.yaml ($/1K tokens) times 1e9.
PRICES_PICO: dict[str, tuple[int, int]] = {
    "llama-2-70b": (800_000, 1_600_000),
    "llama-2-7b": (100_000, 200_000),
    "gpt-4": (30_000_000, 60_000_000),
}

MODELS = tuple(PRICES_PICO)
TEAMS = ("search", "ads", "assistant", "growth")
PROJECTS = ("alpha", "beta", "gamma")
APPS = ("web", "batch", "api")
NAMESPACES = ("prod", "staging")

#: Event time of the first event; later events advance STEP_MS each. In the past, so that
#: costflux's future-timestamp check never fires, and fixed, so runs are comparable.
BASE_TS = datetime(2023, 11, 16, 18, 0, 0, tzinfo=UTC)
STEP_MS = 5
WINDOW_MS = 60_000


def generate(count: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Yield ``count`` usage events with distinct ids, in event-time order."""
    rng = random.Random(seed)
    step = timedelta(milliseconds=STEP_MS)
    ts = BASE_TS
    for index in range(count):
        yield {
            "event_id": f"e-{index}",
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "model": rng.choice(MODELS),
            "input_tokens": rng.randint(20, 2000),
            "output_tokens": rng.randint(5, 500),
            "labels": {
                "team": rng.choice(TEAMS),
                "project": rng.choice(PROJECTS),
                "app": rng.choice(APPS),
                "namespace": rng.choice(NAMESPACES),
            },
        }
        ts += step


def dims_key(event: dict[str, Any]) -> bytes:
    """The Kafka key the Quix topics use: the five aggregation dimensions."""
    labels = event["labels"]
    return "|".join(
        (event["model"], labels["team"], labels["project"], labels["app"], labels["namespace"])
    ).encode()


def cost_pico(event: dict[str, Any]) -> int:
    """Token cost of one event in pico-dollars."""
    price_in, price_out = PRICES_PICO[event["model"]]
    cost: int = event["input_tokens"] * price_in + event["output_tokens"] * price_out
    return cost


def ts_ms(event: dict[str, Any]) -> int:
    """Event time in epoch milliseconds (the ts field is ISO 8601 UTC)."""
    return int(datetime.fromisoformat(event["ts"]).timestamp() * 1000)
