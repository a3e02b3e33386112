"""What the cost store holds for a deployment, read straight from Redis: the conditions fault
tests wait on instead of sleeping."""

from __future__ import annotations

import redis

from costflux.settings import Settings
from costflux.streams.cost_store import SourceState, StoreKeys
from tests.integration.worker_process import WorkerProcess


def stored_sources(settings: Settings, topic: str | None = None) -> dict[int, SourceState]:
    """Each partition of ``topic`` (the usage topic by default) with a stored state."""
    topic = topic or settings.topic_usage
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        raw = client.hgetall(StoreKeys(settings.consumer_group).sources)
    finally:
        client.close()
    states = {}
    for name, text in raw.items():
        source, _, partition = name.decode().rpartition(":")
        if source == topic:
            states[int(partition)] = SourceState.parse(text)
    return states


def applied_messages(settings: Settings, topic: str | None = None) -> int:
    """How many of the topic's messages the store has applied (its offsets are contiguous:
    the producers here are idempotent, never transactional)."""
    return sum(state.next_offset or 0 for state in stored_sources(settings, topic).values())


def wait_applied(worker: WorkerProcess, messages: int, topic: str | None = None,
                 timeout_s: float = 120) -> None:
    """Until the store has applied all ``messages`` of the topic. After it nothing more can
    be added to any window (a flush applies only once), so totals read then are final."""
    worker.wait_for(lambda: applied_messages(worker.settings, topic) >= messages, timeout_s,
                    f"applying all {messages} messages of the topic")
    assert applied_messages(worker.settings, topic) == messages
