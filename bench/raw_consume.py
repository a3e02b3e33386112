"""Baseline 'raw': confluent-kafka consume(10000) + orjson + a dict aggregate. The ceiling.

Cost is summed by (1-minute window, model, team, project, app, namespace), the same rows
costflux's finest window holds. Run by bench/run.py; settings come from BENCH_* variables,
the consumer configuration as JSON (costflux.streams.kafka.consumer_config with
fetch.queue.backoff.ms=10, built by the orchestrator).
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import datetime

import orjson
from child import Progress, env
from confluent_kafka import Consumer, KafkaError
from workload import PRICES_PICO


def main() -> None:
    expected = int(env("EVENTS"))
    progress = Progress(expected, env("REPORT"))
    # streams.kafka.consumer_config(...) as built by the orchestrator: importing it here would
    # pull pydantic and faust into this process and add ~20 MB to the RSS being measured.
    consumer = Consumer(orjson.loads(env("CONSUMER_CONFIG")))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    assigned_at: list[float] = []
    consumer.subscribe(
        [env("TOPIC")], on_assign=lambda c, parts: assigned_at.append(time.time())
    )

    loads = orjson.loads
    parse_ts = datetime.fromisoformat
    prices = PRICES_PICO
    totals: dict[tuple[int, str, str, str, str, str], int] = {}
    seen = 0
    try:
        while seen < expected and not stop.is_set():
            messages = consumer.consume(10000, timeout=0.2)
            if not messages:
                continue
            progress.first()
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"consumer error: {error}")
                document = loads(message.value())  # type: ignore[arg-type] # data has a value
                for event in document if type(document) is list else (document,):
                    model = event["model"]
                    labels = event["labels"]
                    price_in, price_out = prices[model]
                    cost = event["input_tokens"] * price_in + event["output_tokens"] * price_out
                    key = (
                        int(parse_ts(event["ts"]).timestamp()) // 60,
                        model,
                        labels["team"],
                        labels["project"],
                        labels["app"],
                        labels["namespace"],
                    )
                    totals[key] = totals.get(key, 0) + cost
                    seen += 1
        progress.seen = seen
        progress.cost_pico = sum(totals.values())
        progress.extra = {
            "assigned_at": assigned_at[0] if assigned_at else None,
            "rows": len(totals),
        }
        progress.check_done()
        # Stay alive until the orchestrator has read the memory high-water mark.
        stop.wait(120)
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
