"""Many workers and crashes: a rebalance 1 -> 2 -> 1 under load, SIGKILL mid-window with the
worker's disk kept or lost, alerts across a crash.

Every total is compared with a recomputation from the raw topic read back after the run
(Decimal, deduplicated by ``event_id``, first occurrence), by model and team, per minute and
per hour window: no double counting, no gaps, whatever moved where.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from costflux.embedded import free_port
from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.integration.expected import event_cost, group_name
from tests.integration.stored import wait_applied
from tests.integration.test_alerting import (
    FAST_DETECTION,
    HOUR_MS,
    MINUTE_MS,
    AlertsReader,
    _evaluated_to,
    _ms,
    alerts_until_evaluated,
    planted_spike,
    produce,
)
from tests.integration.test_faults import usage
from tests.integration.test_producer import read_all
from tests.integration.worker_process import WorkerProcess
from tests.notify.receiver import Receiver
from tests.notify.test_notifier import Instances, notices

pytestmark = [pytest.mark.integration, pytest.mark.fault]

HOUR_START_MS = 1_699_999_200_000  # 2023-11-14T22:00:00Z: every event below is in this hour
SPAN = "2023-11-14T22:00:00Z,2023-11-14T23:00:00Z"
DIMENSIONS = "model,label:team"


# --- the load ------------------------------------------------------------------------------

class Load:
    """Streams events from a thread, a batch at a time, with re-sent copies of recent events.

    ``gates`` maps an event index to an Event: from that index on, until the test sets it,
    the stream slows to a trickle (~100 events/s) instead of stopping, so a test places a
    rebalance or a crash at a known point of a stream that keeps flowing (a joining worker
    needs events to arrive to show it took partitions).
    """

    def __init__(self, settings: Settings, count: int, spacing_ms: int,
                 gates: dict[int, threading.Event], seed: int) -> None:
        self.settings = settings
        self.count = count
        self.spacing_ms = spacing_ms
        self.gates = gates
        self.rng = random.Random(seed)
        self.sent = 0
        self.messages = 0
        self.duplicates = 0
        self.failure: BaseException | None = None
        self.reached: dict[int, threading.Event] = {index: threading.Event() for index in gates}
        self.thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> Load:
        ensure_topics(self.settings, {self.settings.topic_usage: self.settings.topic_partitions})
        self.thread.start()
        return self

    def join(self, timeout_s: float = 180) -> None:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "the load did not finish"
        assert self.failure is None, self.failure

    def _event(self, index: int) -> dict[str, Any]:
        return usage(index, ts_ms=HOUR_START_MS + index * self.spacing_ms)

    def _run(self) -> None:
        try:
            with UsageProducer(producer_config(self.settings), self.settings.topic_usage,
                               events_per_message=10) as producer:
                deadline = time.monotonic() + 240
                closed: list[threading.Event] = []
                for index in range(self.count):
                    if index in self.gates:
                        producer.flush()
                        self.reached[index].set()
                        closed.append(self.gates[index])
                    closed = [gate for gate in closed if not gate.is_set()]
                    if closed:
                        assert time.monotonic() < deadline, f"a gate before {index} never opened"
                        producer.send_partial_batch()
                        producer.flush()
                        time.sleep(0.01)
                    producer.send(self._event(index))
                    # A retried request: an identical copy of a recent event (within the
                    # allowed lateness), often in another message and partition.
                    if index > 200 and self.rng.random() < 0.01:
                        producer.send(self._event(index - self.rng.randint(1, 200)))
                        self.duplicates += 1
                    if index % 500 == 499:
                        producer.flush()
                        time.sleep(0.05)  # ~10 k events/s: a stream, not one burst
                producer.flush()
                self.sent, self.messages = producer.events_sent, producer.messages_sent
        except BaseException as exc:  # reported by join()
            self.failure = exc


def raw_events(settings: Settings, load: Load) -> list[dict[str, Any]]:
    """The usage topic read back: every event, deduplicated by event_id (first occurrence)."""
    seen: dict[str, dict[str, Any]] = {}
    copies = 0
    for message in read_all(settings.kafka_bootstrap or "", settings.topic_usage,
                            settings.topic_partitions, load.messages):
        document = orjson.loads(message.value)
        for event in document if isinstance(document, list) else [document]:
            copies += 1
            seen.setdefault(event["event_id"], event)
    assert copies == load.sent, "the topic does not hold what was sent"
    assert copies - len(seen) == load.duplicates > 0
    return list(seen.values())


def expected_windows(events: list[dict[str, Any]], size_ms: int) -> dict[tuple[int, str], Any]:
    """(window start, model/team) -> (cost, requests), recomputed with Decimal."""
    totals: dict[tuple[int, str], list[Any]] = {}
    for event in events:
        ts_ms = round(Decimal(str(event["ts"])) * 1000)
        key = (ts_ms - ts_ms % size_ms, group_name(event, DIMENSIONS))
        row = totals.setdefault(key, [Decimal(0), 0])
        row[0] += event_cost(event)
        row[1] += 1
    return {key: tuple(value) for key, value in totals.items()}


def served_windows(worker: WorkerProcess, step: str) -> dict[tuple[int, str], Any]:
    status, body = worker.get("/model/allocation", window=SPAN, aggregate=DIMENSIONS, step=step)
    assert status == 200, body
    return {(_ms(row["window"]["start"]), name): (Decimal(row["totalCostExact"]),
                                                  row["requests"])
            for group in body["data"] for name, row in group.items()}


def assert_exact_totals(worker: WorkerProcess, events: list[dict[str, Any]],
                        messages: int) -> None:
    """Per minute and per hour window, by model and team: equal to the recomputation, once
    all ``messages`` of the usage topic are applied (nothing can be added after that)."""
    try:
        wait_applied(worker, messages)
    except AssertionError as exc:
        print(exc)  # the log tail; the comparison below shows which windows are off
    for step, size_ms in (("1m", MINUTE_MS), ("1h", HOUR_MS)):
        served, expected = served_windows(worker, step), expected_windows(events, size_ms)
        assert {k: v for k, v in served.items() if expected.get(k) != v} == {
            k: v for k, v in expected.items() if served.get(k) != v}, step


def ingested(worker: WorkerProcess) -> float:
    return worker.metric("costflux_ingest_events_total")


# --- 1 -> 2 -> 1 ---------------------------------------------------------------------------

@pytest.mark.parametrize("leave", ["sigterm", "sigkill"])
def test_rebalance_one_two_one_under_load_leaves_every_total_exact(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    tmp_path: Path, leave: str,
) -> None:
    settings = settings_for(topic_partitions=8, ingest_flush_s=0.1)
    join_at, leave_at, count = 12_000, 26_000, 40_000
    gates = {join_at: threading.Event(), leave_at: threading.Event()}
    first = start_worker(settings)
    first.wait_ready()
    load = Load(settings, count, spacing_ms=50, gates=gates, seed=7).start()

    assert load.reached[join_at].wait(120)
    # Its own data dir, as each worker of a Deployment has (Faust keeps its tables there).
    second = start_worker(settings.model_copy(update={
        "http_port": free_port(), "data_dir": tmp_path / "second"}))
    second.wait_ready()  # B joins while events keep arriving
    second.wait_for(lambda: ingested(second) > 0, 120, "taking a share of the partitions")
    gates[join_at].set()

    assert load.reached[leave_at].wait(180)
    share = ingested(second)
    if leave == "sigkill":
        second.kill()
    else:
        second.stop()
    gates[leave_at].set()  # full speed again while A takes B's partitions back
    load.join()

    assert share > 0 and ingested(first) > 0
    events = raw_events(settings, load)
    assert len(events) == count
    # The one worker left answers for everything, including what B had counted.
    assert_exact_totals(first, events, load.messages)


# --- SIGKILL mid-window, the worker's disk lost ------------------------------------------

def test_sigkill_mid_window_and_restart_without_its_disk_is_exact(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """The cost store holds every window with the offsets it covers: a worker's own disk
    (Faust's data dir, RocksDB) holds nothing the totals depend on, so a restart on a new
    disk is exact."""
    settings = settings_for(topic_partitions=4, ingest_flush_s=0.05, table_store="rocksdb")
    assert settings.data_dir is not None
    kill_at, count = 9_000, 24_000
    # 100 ms apart: the kill lands inside a minute window, and all of it inside one hour
    # window, which keeps taking events after the restart.
    gate = threading.Event()
    worker = start_worker(settings)
    worker.wait_ready()
    load = Load(settings, count, spacing_ms=100, gates={kill_at: gate}, seed=3).start()
    assert load.reached[kill_at].wait(120)
    gate.set()
    worker.wait_for(lambda: ingested(worker) > kill_at // 2, 60, "ingesting")
    time.sleep(random.Random(kill_at).uniform(0.0, 0.4))  # a random point of a flush
    worker.kill()
    shutil.rmtree(settings.data_dir)

    restarted = start_worker(settings)
    restarted.wait_ready()
    load.join()
    events = raw_events(settings, load)
    assert len(events) == count
    assert_exact_totals(restarted, events, load.messages)


# --- alerts across a crash -----------------------------------------------------------------

@pytest.mark.parametrize("kill_after_firing", [False, True])
def test_alerts_across_a_crash_are_neither_lost_nor_posted_twice(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
    redis_url: str, kill_after_firing: bool,
) -> None:
    """SIGKILL around the firing step: before it (the restarted worker must still fire) or
    right after it reached Kafka (its state may not be recorded: the step re-runs).

    "Sent twice" means a notice a notifier would post twice: copies on Kafka are allowed
    (the detector sends before it records, at least once), but every copy of an
    (alert_id, state, repeat) must be byte-identical, since `costflux notify` claims that
    triple once in Redis and posts the first copy it reads. A real notifier posting to a
    local receiver shows the end result: one firing and one resolved message.
    """
    settings = settings_for(**FAST_DETECTION, notify_min_interval_s=0.0)
    start, events = planted_spike()
    fires_at = start + 21 * HOUR_MS
    before = [e for e in events if e["ts"] * 1000 < fires_at + 30 * MINUTE_MS]
    receiver = Receiver([])
    notifiers = Instances(redis_url)
    reader = AlertsReader(settings)
    ensure_topics(settings, {settings.topic_deadletter: settings.topic_partitions})
    notifier = notifiers.start(settings, receiver.url, group=settings.consumer_group + "-notify")
    worker = start_worker(settings)
    try:
        produce(settings, before)
        worker.wait_ready()
        if kill_after_firing:
            reader.read_until(lambda got: any(a["state"] == "firing" for a in got), 120, worker)
        else:
            # The step at 20:00 is evaluated; the firing one (21:00) is next or under way.
            worker.wait_for(lambda: _evaluated_to(worker) >= fires_at - HOUR_MS, 120,
                            "evaluating the hour before the spike")
        worker.kill()
        restarted = start_worker(settings)
        produce(settings, events[len(before):])
        restarted.wait_ready()
        reader.read_until(lambda got: any(a["state"] == "resolved" for a in got), 120,
                          restarted)
        alerts = alerts_until_evaluated(reader, restarted, start + 31 * HOUR_MS)
        restarted.wait_for(lambda: len(receiver.received) >= 2, 30, "notifying")
        time.sleep(1.0)  # a second post would arrive now
    finally:
        reader.close()
        notifiers.stop(notifier)
        receiver.close()
    assert not notifiers.failures, notifiers.failures

    copies: dict[tuple[str, str, int], set[bytes]] = {}
    for alert in alerts:
        key = (alert["alert_id"], alert["state"], alert["repeat"])
        copies.setdefault(key, set()).add(orjson.dumps(alert, option=orjson.OPT_SORT_KEYS))
    assert all(len(contents) == 1 for contents in copies.values()), copies
    assert sorted((a["rule"], a["state"], _ms(a["starts_at"])) for a in
                  (orjson.loads(next(iter(c))) for c in copies.values())) == [
        ("CostSpike", "firing", fires_at), ("CostSpike", "resolved", fires_at)]
    posted = notices(receiver)
    assert Counter(alert_id for alert_id, _, _ in posted) == {alerts[0]["alert_id"]: 2}
