"""What 1,000 GPUs sampled every second cost a costflux worker.

    python bench/gpu.py [--gpus 1000] [--seconds 30]

Starts one embedded broker and Redis, and one costflux worker. Measures the worker's CPU
seconds (user + system, /proc) over three phases, in the same run:

1. idle: nothing published for ``--seconds`` (timers, polling: the baseline);
2. paced: ``--gpus`` samples published every wall second for ``--seconds``, event time = now;
3. backlog: ``--gpus`` x 60 samples published at once, consumed as fast as the worker can.

A worker is one process bound by one interpreter lock, so its capacity is about one core.
Share of one core = paced CPU / seconds - idle CPU / seconds. The backlog phase gives the
CPU cost per sample when flushes are large (samples per worker CPU second, idle subtracted).
Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from procs import ConsumerProcess, cpu_seconds, thread_cpu_seconds
from run import ready, scrape, start_profiler, stop_profiler

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
PARTITIONS = 8


def sample(gpu: int, end_ms: int, interval_s: float) -> bytes:
    node, index = divmod(gpu, 8)
    return orjson.dumps({
        "event_id": f"n{node}-g{index}-{end_ms}", "ts": end_ms / 1000, "interval_s": interval_s,
        "node": f"gpu-node-{node}", "gpu_uuid": f"GPU-{gpu:08d}", "gpu_index": index,
        "gpu_model": "NVIDIA A100-SXM4-80GB", "gpu_type": "nvidia-a100-80gb",
        "pricing_tier": ("on_demand", "spot", "reserved_1y")[node % 3],
        "utilization_pct": (gpu * 37 + end_ms // 1000) % 101, "memory_used_bytes": 1 << 34,
        "memory_total_bytes": 80 << 30,
        "labels": {"namespace": f"ns-{node % 10}", "model": ("llama-2-70b", "llama-2-7b")[gpu % 2],
                   "team": f"team-{node % 12}"},
    })


def gpu_samples_total(port: int) -> float:
    return scrape(port)["costflux_gpu_samples_total"]


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s} s")
        time.sleep(1.0)  # /metrics renders 1,000 GPU gauges: polling it is not free


def run(gpus: int, seconds: int, profile: bool = False) -> dict[str, Any]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
        settings = Settings(kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url,
                            topic_partitions=PARTITIONS)
        ensure_topics(settings, {settings.topic_gpu: PARTITIONS})
        port = free_port()
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("COSTFLUX_")}
        env.update({"COSTFLUX_KAFKA_BOOTSTRAP": broker.bootstrap,
                    "COSTFLUX_REDIS_URL": redis_server.url, "COSTFLUX_HTTP_PORT": str(port),
                    "COSTFLUX_TOPIC_PARTITIONS": str(PARTITIONS), "COSTFLUX_LOG_LEVEL": "warning",
                    "COSTFLUX_DATA_DIR": tempfile.mkdtemp(prefix="costflux-bench-gpu-")})
        worker = ConsumerProcess("costflux-gpu", [sys.executable, "-m", "costflux", "worker"],
                                 env, RESULTS / "gpu-worker.log", REPO)
        producer = UsageProducer(producer_config(settings), settings.topic_gpu,
                                 events_per_message=1)
        try:
            wait_until(lambda: ready(port), 120, "ready worker")
            time.sleep(3)  # let start-up work (recovery, first timers) settle
            report: dict[str, Any] = {"gpus": gpus, "seconds": seconds}

            before = cpu_seconds(worker.pid) or 0.0
            time.sleep(seconds)
            report["idle_cpu_s"] = (cpu_seconds(worker.pid) or 0.0) - before

            profiler = start_profiler(worker.pid, RESULTS / "gpu-paced.pyspy.txt") if profile \
                else None
            before = cpu_seconds(worker.pid) or 0.0
            threads_before = thread_cpu_seconds(worker.pid)
            started = time.monotonic()
            for tick in range(seconds):
                end_ms = time.time_ns() // 1_000_000
                for gpu in range(gpus):
                    producer.send_raw(sample(gpu, end_ms, 1.0), key=f"GPU-{gpu:08d}".encode())
                producer.flush()
                time.sleep(max(0.0, started + tick + 1 - time.monotonic()))
            wait_until(lambda: gpu_samples_total(port) >= gpus * seconds, 120, "paced samples")
            report["paced_cpu_s"] = (cpu_seconds(worker.pid) or 0.0) - before
            report["paced_cpu_s_by_thread"] = {
                name: round(seconds_now - threads_before.get(name, 0.0), 2)
                for name, seconds_now in sorted(thread_cpu_seconds(worker.pid).items())
            }
            report["paced_wall_s"] = time.monotonic() - started
            if profiler is not None:
                stop_profiler(profiler)

            backlog = gpus * 60
            origin = time.time_ns() // 1_000_000 - 61_000
            before = cpu_seconds(worker.pid) or 0.0
            started = time.monotonic()
            for second in range(60):
                for gpu in range(gpus):
                    producer.send_raw(sample(gpu, origin + second * 1000, 1.0),
                                      key=f"GPU-{gpu:08d}".encode())
            producer.flush()
            total = gpus * seconds + backlog
            wait_until(lambda: gpu_samples_total(port) >= total, 300, "backlog samples")
            report["backlog_s"] = time.monotonic() - started
            report["backlog_cpu_s"] = (cpu_seconds(worker.pid) or 0.0) - before
        finally:
            producer.close()
            worker.stop()
    idle_rate = report["idle_cpu_s"] / seconds
    report["share_of_one_core"] = report["paced_cpu_s"] / seconds - idle_rate
    # The worker's CPU per sample when it works through a backlog as fast as it can.
    backlog_cpu = report["backlog_cpu_s"] - idle_rate * report["backlog_s"]
    report["samples_per_cpu_s"] = backlog / backlog_cpu
    report["share_of_one_core_at_backlog_cost"] = gpus / report["samples_per_cpu_s"]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the worker while paced, to bench/results/gpu-paced.pyspy.txt")
    args = parser.parse_args(argv)
    report = run(args.gpus, args.seconds, args.profile)
    (RESULTS / "gpu.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"{args.gpus} GPUs x 1 sample/s for {args.seconds} s:")
    print(f"  idle worker      {report['idle_cpu_s']:.2f} CPU s")
    print(f"  paced            {report['paced_cpu_s']:.2f} CPU s "
          f"-> {report['share_of_one_core']:.1%} of one core above idle")
    share = report["share_of_one_core_at_backlog_cost"]
    print(f"  backlog          {report['samples_per_cpu_s']:,.0f} samples per worker CPU second "
          f"-> {args.gpus:,} GPUs/s = {share:.1%} of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
