"""Alert latency: from the event that makes a rule's condition true to the alert event on
Kafka and to the Slack message at a receiver.

    python bench/alerts.py [--trials 30] [--gap 3]

Starts one embedded broker and Redis, one worker and one `costflux notify` posting to a local
HTTP receiver. Background traffic (event time = now) keeps the watermark moving. Each trial
is a new team whose one request costs $6, over the $5 of two rules on the last 24 hours'
cost by team: ``Over5`` (for 0) and ``Over5For30s`` (for 30 s). The latency of a trial is
wall time from producing that request to the firing event read from the alerts topic, and
to the message at the receiver. Printed: p50 / p99 / max per rule, and the same minus the
rule's ``for`` (the part that is costflux, not the rule).

What bounds it, by design: an event is evaluated once the watermark has passed the end of its
evaluation step, and the watermark trails the newest event by the allowed lateness. So the
floor is (wait for the step to end: step/2 on average) + allowed lateness + settle. This run
uses a 10 s step and 2 s of lateness; with the defaults (60 s, 300 s) add ~5.5 minutes.
Writes bench/results/alerts.json.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer
from procs import ConsumerProcess
from run import ready

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.settings import Settings
from costflux.streams.kafka import consumer_config, ensure_topics, producer_config
from costflux.streams.producer import UsageProducer

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # the tests' Slack stand-in
from tests.notify.receiver import Receiver  # noqa: E402 - after the path it needs

RESULTS = BENCH_DIR / "results"
PARTITIONS = 4
STEP_S, LATENESS_S, SETTLE_S = 10, 2, 1.0
RULES = """
rules:
  - {name: Over5, signal: daily_cost, op: ">", threshold: 5, group_by: [team]}
  - {name: Over5For30s, signal: daily_cost, op: ">", threshold: 5, for: 30s, group_by: [team]}
"""
FOR_S = {"Over5": 0.0, "Over5For30s": 30.0}


def receiver_arrivals(receiver: Receiver, teams: list[str]) -> dict[tuple[str, str], float]:
    """When each (rule, team) firing message arrived at the receiver."""
    arrivals: dict[tuple[str, str], float] = {}
    for at, raw in receiver.received:
        body = raw.decode()
        for team in teams:
            for rule in FOR_S:
                if f"trial-{team}`" in body and f"FIRING: {rule} (" in body:
                    arrivals.setdefault((rule, team), at)
    return arrivals


def request(event_id: str, team: str, tokens: int) -> dict[str, Any]:
    return {"event_id": event_id, "ts": time.time(), "model": "gpt-4", "input_tokens": tokens,
            "output_tokens": 0, "labels": {"team": team}}


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.5), "p99": at(0.99), "max": ordered[-1], "n": len(ordered)}


def run(trials: int, gap_s: float) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    teams = [f"{n:03d}" for n in range(trials)]
    receiver = Receiver([])
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
        settings = Settings(kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url,
                            topic_partitions=PARTITIONS)
        ensure_topics(settings, {settings.topic_usage: PARTITIONS,
                                 settings.topic_alerts: PARTITIONS,
                                 settings.topic_deadletter: PARTITIONS})
        rules = Path(tempfile.mkdtemp(prefix="costflux-bench-alerts-")) / "rules.yaml"
        rules.write_text(RULES)
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("COSTFLUX_")}
        port = free_port()
        env.update({
            "COSTFLUX_KAFKA_BOOTSTRAP": broker.bootstrap, "COSTFLUX_REDIS_URL": redis_server.url,
            "COSTFLUX_HTTP_PORT": str(port), "COSTFLUX_TOPIC_PARTITIONS": str(PARTITIONS),
            "COSTFLUX_LOG_LEVEL": "info", "COSTFLUX_RULES_FILE": str(rules),
            "COSTFLUX_WINDOW_SIZES": f"{STEP_S},3600", "COSTFLUX_EVAL_INTERVAL_S": str(STEP_S),
            "COSTFLUX_ALLOWED_LATENESS_S": str(LATENESS_S), "COSTFLUX_PARTITION_IDLE_S": "5",
            "COSTFLUX_EVAL_SETTLE_S": str(SETTLE_S), "COSTFLUX_DATA_DIR": str(rules.parent),
            "COSTFLUX_NOTIFY_MIN_INTERVAL_S": "1.0",
        })
        worker = ConsumerProcess("costflux-worker", [sys.executable, "-m", "costflux", "worker"],
                                 env, RESULTS / "alerts-worker.log", BENCH_DIR.parent)
        notifier = ConsumerProcess(
            "costflux-notify", [sys.executable, "-m", "costflux", "notify"],
            {**env, "COSTFLUX_SLACK_WEBHOOK_URL": receiver.url},
            RESULTS / "alerts-notify.log", BENCH_DIR.parent)
        consumer = Consumer(consumer_config(settings, "bench-alerts-reader",
                                            **{"auto.offset.reset": "latest"}))
        consumer.subscribe([settings.topic_alerts])
        producer = UsageProducer(producer_config(settings), settings.topic_usage,
                                 events_per_message=1)
        on_kafka: dict[tuple[str, str], float] = {}
        sent: dict[str, float] = {}
        stop = threading.Event()

        def read_alerts() -> None:
            while not stop.is_set():
                for message in consumer.consume(100, timeout=0.2):
                    if message.error() is None:
                        alert = orjson.loads(message.value())  # type: ignore[arg-type]
                        team = alert["labels"].get("team", "").removeprefix("trial-")
                        if alert["state"] == "firing":
                            on_kafka.setdefault((alert["rule"], team), time.monotonic())

        reader = threading.Thread(target=read_alerts, daemon=True)
        try:
            deadline = time.monotonic() + 120
            while not ready(port):
                if time.monotonic() > deadline:
                    raise TimeoutError("worker not ready in 120 s")
                time.sleep(0.5)
            reader.start()
            background, rng = 0, random.Random(7)
            next_trial = time.monotonic() + 15  # let the watermark and the detector start
            pending = list(teams)
            end = None
            while end is None or time.monotonic() < end:
                background += 1
                producer.send(request(f"bg-{background}", f"bg-{rng.randrange(8)}", 10))
                if pending and time.monotonic() >= next_trial:
                    team = pending.pop(0)
                    producer.send(request(f"trial-{team}", f"trial-{team}", 200_000))  # $6
                    producer.flush()
                    sent[team] = time.monotonic()
                    next_trial += gap_s
                    if not pending:
                        end = time.monotonic() + 30 + STEP_S + LATENESS_S + 20
                producer.flush() if background % 20 == 0 else None
                time.sleep(0.02)
        finally:
            stop.set()
            producer.close()
            notifier.stop()
            worker.stop()
            consumer.close()
            receiver.close()
    report: dict[str, Any] = {"trials": trials, "gap_s": gap_s, "step_s": STEP_S,
                              "allowed_lateness_s": LATENESS_S, "settle_s": SETTLE_S}
    for rule, for_s in FOR_S.items():
        for where, arrivals in (("kafka", on_kafka),
                                ("receiver", receiver_arrivals(receiver, teams))):
            latencies = [arrivals[(rule, team)] - sent[team] for team in teams
                         if (rule, team) in arrivals]
            missing = len(teams) - len(latencies)
            stats = percentiles(latencies) if latencies else {}
            report[f"{rule}.{where}"] = {**stats, "missing": missing,
                                         "minus_for": {k: v - for_s for k, v in stats.items()
                                                       if k != "n"}}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between trials")
    args = parser.parse_args(argv)
    report = run(args.trials, args.gap)
    (RESULTS / "alerts.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"step {STEP_S} s, allowed lateness {LATENESS_S} s, settle {SETTLE_S} s; "
          f"floor ~ step/2 + lateness + settle = {STEP_S / 2 + LATENESS_S + SETTLE_S:.1f} s")
    print("| rule (for) | at | p50 s | p99 s | max s | p50 - for | p99 - for | missing |")
    print("|---|---|---|---|---|---|---|---|")
    for rule, for_s in FOR_S.items():
        for where in ("kafka", "receiver"):
            row = report[f"{rule}.{where}"]
            if "p50" not in row:
                print(f"| {rule} ({for_s:.0f} s) | {where} | - | - | - | - | - | "
                      f"{row['missing']} |")
                continue
            print(f"| {rule} ({for_s:.0f} s) | {where} | {row['p50']:.1f} | {row['p99']:.1f} | "
                  f"{row['max']:.1f} | {row['minus_for']['p50']:.1f} | "
                  f"{row['minus_for']['p99']:.1f} | {row['missing']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
