"""The combine agent's progress check against a real broker's log ends: how far behind, a
stall named in /readyz's reasons, and cleared once the agent moves again.

The agent is played by the test (a stall is the absence of ``took`` calls); the log ends are
the broker's, read as the worker reads them (per owned partition, one request per check).
The worker-level check (no stall reported through a real catch-up, nothing left behind) is
in tests/integration/test_resilience.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Set

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.types import TP
from prometheus_client import CollectorRegistry

from agents.health import Health
from agents.metrics import CostMetrics
from agents.progress import CombineProgress
from costflux.settings import Settings
from streams.app import COMBINE_STARTING
from streams.kafka import consumer_config, ensure_topics, producer_config
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration


class BrokerPositions:
    """The worker consumer's three answers for a fixed assignment: log ends from the broker."""

    def __init__(self, settings: Settings, topic: str, partitions: Set[int],
                 resumed: Mapping[int, int]) -> None:
        self._config = consumer_config(settings, f"{topic}-ends")
        self._tps = {TP(topic, p) for p in partitions}
        self._resumed = resumed

    def assignment(self) -> Set[TP]:
        return self._tps

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        return await asyncio.to_thread(self._ends, partitions)

    def _ends(self, partitions: tuple[TP, ...]) -> dict[TP, int]:
        consumer = Consumer(dict(self._config))
        try:
            return {tp: consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition), timeout=10)[1] for tp in partitions}
        finally:
            consumer.close()

    def resume_offset(self, tp: TP) -> int | None:
        return self._resumed.get(tp.partition)


def _partials(settings: Settings, unique: Callable[[str], str], counts: Mapping[int, int]) -> str:
    """A new topic with ``counts`` records in its partitions."""
    topic = unique("partials")
    ensure_topics(settings, {topic: len(counts)})
    _produce(settings, topic, counts)
    return topic


def _produce(settings: Settings, topic: str, counts: Mapping[int, int]) -> None:
    """One record per batch: Tansu 0.6 answers a ListOffsets for the latest offset with the
    last batch's base offset + 1, short of the end by the rest of that batch (Apache Kafka
    answers the end). The worker only under-reads a backlog by part of one batch there."""
    producer = Producer(producer_config(settings))
    for partition, count in counts.items():
        for n in range(count):
            producer.produce(topic, value=b"%d" % n, partition=partition)
            assert producer.flush(10) == 0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.rebalancing = False

    def __call__(self) -> float:
        return self.now


def _progress(settings: Settings, topic: str, resumed: Mapping[int, int], partitions: Set[int],
              ) -> tuple[CombineProgress, Health, CollectorRegistry, Clock]:
    """The check on a fixed assignment, its clock and rebalancing flag set by the test."""
    registry, clock = CollectorRegistry(), Clock()
    health = Health(registry)
    positions = BrokerPositions(settings, topic, partitions, resumed)
    progress = CombineProgress(topic, lambda: positions, lambda: clock.rebalancing, 60.0,
                               health, CostMetrics(registry), clock)
    return progress, health, registry, clock


def _check_at(progress: CombineProgress, clock: Clock, now: float) -> None:
    clock.now = now
    asyncio.run(progress.check())


def _gauges(registry: CollectorRegistry) -> tuple[float | None, float | None]:
    return (registry.get_sample_value("costflux_combine_behind_partials"),
            registry.get_sample_value("costflux_combine_still_seconds"))


def test_a_partition_left_behind_is_named_once_still_for_the_threshold_then_cleared(
    settings_for: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = settings_for()
    topic = _partials(settings, unique, {0: 10, 1: 4})
    progress, health, registry, clock = _progress(settings, topic, {0: 0, 1: 4}, {0, 1})
    for offset in range(4):
        progress.took(0, offset)
    progress.took(0, 1)  # a re-delivery after a seek does not move the position back

    _check_at(progress, clock, 0.0)
    assert _gauges(registry) == (6.0, 0.0) and health.problems() == []
    _check_at(progress, clock, 59.0)
    assert _gauges(registry) == (6.0, 59.0) and health.problems() == []
    _check_at(progress, clock, 61.0)
    assert health.problems() == [
        "costflux.combine stalled: partition 0: 6 behind the log end (at offset 4 of 10), "
        "nothing taken for 61 s"]

    for offset in range(4, 10):
        progress.took(0, offset)
    _check_at(progress, clock, 62.0)
    assert _gauges(registry) == (0.0, 0.0) and health.problems() == []


def test_a_partition_nothing_was_taken_from_yet_is_where_the_group_resumed_it(
    settings_for: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    settings = settings_for()
    topic = _partials(settings, unique, {0: 5, 1: 5, 2: 5})
    # 0 resumed at its end, 1 three short of it, 2 not known (not judged).
    progress, health, registry, clock = _progress(settings, topic, {0: 5, 1: 2}, {0, 1, 2})
    _check_at(progress, clock, 0.0)
    assert _gauges(registry) == (3.0, 0.0)
    _check_at(progress, clock, 120.0)
    (reason,) = health.problems()
    assert reason.startswith("costflux.combine stalled: partition 1: 3 behind") and \
        "partition 2" not in reason
    progress.took(1, 0)  # a re-delivery behind where it resumed: no progress
    _check_at(progress, clock, 121.0)
    assert health.problems() == [reason.replace("120 s", "121 s")]
    progress.took(1, 2)
    _check_at(progress, clock, 122.0)
    assert _gauges(registry) == (2.0, 0.0) and health.problems() == []


def test_a_rebalance_that_does_not_end_is_a_stall_too(
    settings_for: Callable[..., Settings], unique: Callable[[str], str]
) -> None:
    """Nothing behind (or nothing assigned to judge), but the worker has been rebalancing
    for the threshold: a hung group join or table recovery."""
    settings = settings_for()
    topic = _partials(settings, unique, {0: 3})
    progress, health, registry, clock = _progress(settings, topic, {0: 3}, {0})
    clock.rebalancing = True
    _check_at(progress, clock, 0.0)
    _check_at(progress, clock, 30.0)
    assert _gauges(registry) == (0.0, 30.0) and health.problems() == []
    _check_at(progress, clock, 61.0)
    assert health.problems() == [
        "costflux.combine stalled: in a rebalance (group join or table recovery) for 61 s"]
    clock.rebalancing = False
    _check_at(progress, clock, 62.0)
    assert _gauges(registry) == (0.0, 0.0) and health.problems() == []


def test_the_worker_is_ready_only_once_the_combine_agent_has_started(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    """/readyz turns 200 after the combine agent's first group join and table recovery, not
    as soon as ingest has its partitions (the join ends seconds later on Tansu)."""
    settings = settings_for(topic_partitions=2)
    ensure_topics(settings, {settings.topic_usage: 2})
    worker = start_worker(settings)
    reasons: list[str] = []

    def ready() -> bool:
        status, body = worker.get("/readyz")
        if status != 200:
            reasons.append(body.get("detail", "") if isinstance(body, dict) else str(body))
        return status == 200

    worker.wait_for(ready, 90, "ready")
    # Faust logs this right after it marks recovery complete, with no await in between: it
    # is in the log before any request can see the worker ready.
    assert "Resuming flow" in worker.log_path.read_text(errors="replace")
    # Start-up's own reasons only (whether the combine agent's shows depends on how far its
    # join trails ingest's: ~1.7 s here, polled every 0.3 s).
    assert set(reasons) <= {"usage ingest waiting for partition assignment",
                            "gpu ingest waiting for partition assignment", COMBINE_STARTING}
