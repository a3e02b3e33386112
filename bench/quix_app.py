"""Baseline 'quix': Quix Streams tumbling 1-minute window sum of cost, by message key.

The Quix topics are keyed by the five dimensions (Quix drops null-keyed messages from
windows and groups windows by key), so the windows hold the same rows as the raw baseline's
dict. A batched message (a JSON array, all one key) is expanded into events and each event's
time set from its ``ts``. Run by bench/run.py; settings come from BENCH_* variables.
"""

from __future__ import annotations

import logging
from typing import Any

from child import Progress, env
from quixstreams import Application
from workload import PRICES_PICO, ts_ms

ALLOWED_LATENESS_MS = 300_000  # costflux's default allowed lateness, as the window's grace


def event_time(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    return ts_ms(value)


def main() -> None:
    expected = int(env("EVENTS"))
    batched = env("BATCHED") == "1"
    progress = Progress(expected, env("REPORT"))
    app = Application(
        broker_address=env("BOOTSTRAP"),
        consumer_group=env("GROUP"),
        auto_offset_reset="earliest",
        state_dir=env("DATADIR"),
        loglevel=logging.INFO,
        # The same consumer tuning the raw baseline and costflux get (costflux.streams.kafka).
        consumer_extra_config={
            "fetch.queue.backoff.ms": 10,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        },
    )
    topic = app.topic(
        env("TOPIC"),
        value_deserializer="json",
        key_deserializer="bytes",
        timestamp_extractor=None if batched else event_time,
    )
    sdf = app.dataframe(topic)
    if batched:
        sdf = sdf.apply(lambda events: events, expand=True)
        sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: ts_ms(value))

    prices = PRICES_PICO

    def cost(event: dict[str, Any]) -> int:
        progress.first()
        price_in, price_out = prices[event["model"]]
        cost_pico: int = event["input_tokens"] * price_in + event["output_tokens"] * price_out
        progress.cost_pico += cost_pico  # a cross-check of the events seen, not of the windows
        return cost_pico

    def count(value: Any) -> None:
        progress.seen += 1
        progress.check_done()

    sdf = sdf.apply(cost)
    sdf = sdf.tumbling_window(60_000, grace_ms=ALLOWED_LATENESS_MS).sum().current()
    sdf = sdf.update(count)
    app.run()


if __name__ == "__main__":
    main()
