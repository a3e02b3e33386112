"""Scale-out: one costflux worker against two (or more) in one consumer group, same run.

    python bench/scale.py [--events N] [--workers 1,2] [--partitions P] [--batch K] [--repeat R]

Starts one embedded broker and Redis. For each worker count, in rounds: a fresh topic, the
workers started and settled (all ready, then ``--settle`` seconds for the group to finish
assigning partitions), then N events produced as batched messages (encoded before the clock
starts) while the workers consume. Timed from the first message produced to every event
counted (the sum of ``llm_requests_total`` over the workers); the run fails if that sum is
not exactly N. Prints events/s per worker count, the ratio to one worker, and CPU seconds
per 100k events (workers, broker, Redis) — the figure that says whether adding a worker adds
work or only spreads it. Writes bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import workload
from confluent_kafka import Producer
from procs import ConsumerProcess, cpu_seconds
from run import (
    RESULTS,
    Bench,
    _check_alive,
    _delta,
    costflux_env,
    create_topics,
    ready,
    redis_used_bytes,
    scrape,
)

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.settings import Settings
from costflux.streams.kafka import producer_config

REPO = Path(__file__).resolve().parent.parent


def encode_batches(events: int, batch: int) -> list[tuple[bytes, bytes]]:
    """(key, value) per message: ``batch`` events as one JSON array, keyed by its first id."""
    messages: list[tuple[bytes, bytes]] = []
    chunk: list[dict[str, Any]] = []
    for event in workload.generate(events):
        chunk.append(event)
        if len(chunk) == batch:
            messages.append((chunk[0]["event_id"].encode(), orjson.dumps(chunk)))
            chunk = []
    if chunk:
        messages.append((chunk[0]["event_id"].encode(), orjson.dumps(chunk)))
    return messages


def produce(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = Producer(producer_config(settings))
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError(f"{topic}: messages left undelivered")


def run_workers(bench: Bench, count: int, attempt: int, settle_s: float,
                messages: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    stage = f"scale-{count}w-{attempt}"
    topic = f"bench.{bench.run_id}.{stage}"
    create_topics(bench.settings, [topic], bench.partitions)
    group = f"bench-{bench.run_id}-{stage}"
    children: list[tuple[ConsumerProcess, int, Path]] = []
    broker_cpu = cpu_seconds(bench.broker_pid)
    redis_cpu = cpu_seconds(bench.redis_pid)
    redis_memory = redis_used_bytes(bench)
    try:
        for index in range(count):
            port = free_port()
            datadir = Path(tempfile.mkdtemp(prefix=f"{stage}-{index}-", dir=bench.scratch))
            env = costflux_env(bench, topic, f"bench.{bench.run_id}.{stage}", group, port,
                               datadir)
            child = ConsumerProcess(f"{stage}-{index}", [sys.executable, "-m", "costflux",
                                    "worker"], env, bench.logs / f"{stage}-{index}.log", REPO)
            children.append((child, port, datadir))
        deadline = time.monotonic() + bench.stage_timeout_s
        for child, port, _ in children:
            while not ready(port):
                _check_alive(child, deadline, "/readyz is 200")
                time.sleep(0.1)
        time.sleep(settle_s)
        cpu_before = [child.cpu_seconds() or 0.0 for child, _, _ in children]
        started = time.time()
        produce(bench.settings, topic, messages)
        produced_at = time.time()
        while True:
            counted = [scrape(port) for _, port, _ in children]
            total = sum(sums["llm_requests_total"] for sums in counted)
            if total >= bench.events:
                done_at = time.time()
                break
            for child, _, _ in children:
                _check_alive(child, deadline, f"llm_requests_total == {bench.events}")
            time.sleep(0.1)
        cpu = [(child.cpu_seconds() or 0.0) - before
               for (child, _, _), before in zip(children, cpu_before, strict=True)]
        peaks = [child.peak_rss_mb() for child, _, _ in children]
        redis_growth = redis_used_bytes(bench) - redis_memory
    finally:
        stopped = [child.stop() for child, _, _ in children]
        for _, _, datadir in children:
            shutil.rmtree(datadir, ignore_errors=True)
    if total != bench.events:
        raise RuntimeError(f"{stage}: llm_requests_total summed to {total:.0f}, expected "
                           f"{bench.events}")
    per_100k = 100_000 / bench.events
    return {
        "workers": count,
        "events_per_s": bench.events / (done_at - started),
        "elapsed_s": done_at - started,
        "produce_s": produced_at - started,
        "ingested_per_worker": [int(sums["costflux_ingest_events_total"]) for sums in counted],
        "worker_cpu_s_per_100k": round(sum(cpu) * per_100k, 2),
        "broker_cpu_s_per_100k": _round(_delta(cpu_seconds(bench.broker_pid), broker_cpu),
                                        per_100k),
        "redis_cpu_s_per_100k": _round(_delta(cpu_seconds(bench.redis_pid), redis_cpu),
                                       per_100k),
        "redis_bytes_per_event": round(redis_growth / bench.events, 1),
        "peak_rss_mb": peaks,
        "stopped": stopped,
    }


def _round(value: float | None, scale: float) -> float | None:
    return None if value is None else round(value * scale, 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="worker counts to compare")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100, help="events per message")
    parser.add_argument("--repeat", type=int, default=2, help="rounds; the best one is shown")
    parser.add_argument("--settle", type=float, default=12.0,
                        help="seconds after the last worker is ready before producing")
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args(argv)
    args.workers = [int(part) for part in args.workers.split(",")]
    if min(args.workers + [args.events, args.partitions, args.batch, args.repeat]) < 1:
        parser.error("--events, --workers, --partitions, --batch and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = time.strftime("%Y%m%d%H%M%S")
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="costflux-scale-"))
    messages = encode_batches(args.events, args.batch)
    runs: dict[int, list[dict[str, Any]]] = {count: [] for count in args.workers}
    try:
        with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
            bench = Bench(
                run_id=run_id, events=args.events, partitions=args.partitions,
                batch=args.batch,
                settings=Settings(kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url),
                broker_pid=broker.pid, redis_pid=redis_server.pid, logs=logs, scratch=scratch,
                stage_timeout_s=120 + args.events / 2000, costflux_log_level="warning",
                profile=False,
            )
            for attempt in range(1, args.repeat + 1):
                for count in args.workers:
                    row = run_workers(bench, count, attempt, args.settle, messages)
                    runs[count].append(row)
                    print(f"- {count} worker(s) #{attempt}: {row['events_per_s']:,.0f} events/s, "
                          f"split {row['ingested_per_worker']}, worker CPU "
                          f"{row['worker_cpu_s_per_100k']} s/100k events", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = {count: max(rows, key=lambda row: row["events_per_s"]) for count, rows in runs.items()}
    base = best[min(best)]["events_per_s"]
    print("\n| workers | events/s | × fewest | worker CPU s / 100k | broker | Redis "
          "| Redis bytes/event | peak RSS MB |\n|---|---|---|---|---|---|---|---|")
    for count, row in sorted(best.items()):
        rss = ", ".join(f"{mb:.0f}" for mb in row["peak_rss_mb"] if mb is not None)
        print(f"| {count} | {row['events_per_s']:,.0f} | {row['events_per_s'] / base:.2f} | "
              f"{row['worker_cpu_s_per_100k']} | {row['broker_cpu_s_per_100k']} | "
              f"{row['redis_cpu_s_per_100k']} | {row['redis_bytes_per_event']} | {rss} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": vars(args) | {"output": str(args.output)},
              "runs": {str(count): rows for count, rows in runs.items()}}
    args.output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
