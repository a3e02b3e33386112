"""A backlog of many hours of event time, stopped by SIGTERM half way through.

Ingest reads a backlog in big flushes, each applied to the store with its partition's clock,
so no event of it is ever judged late against another partition's progress (with the
combine stage, 1 % of a 2.8-hour backlog of 2 M events once was). A SIGTERM in the middle
must exit promptly and lose nothing: the restarted worker resumes from the stored offsets.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from costflux.settings import Settings
from streams.kafka import ensure_topics
from tests.integration.stored import applied_messages
from tests.integration.test_faults import BASE_MS, assert_exact, iso, usage
from tests.integration.test_resilience import SIGTERM_DEADLINE_S, produce
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def test_a_backlog_stopped_by_sigterm_part_way_counts_every_event_once(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    # 41.7 hours of event time, one event a second, 400 teams, no allowed lateness: each
    # flush of the backlog carries hundreds of windows with many rows each, and the backlog
    # takes several seconds to apply (a flush is at most 8 MiB).
    # (The GPU topic's partitions, silent, stop holding the watermark after 2 s.)
    settings = settings_for(topic_partitions=4, allowed_lateness_s=0, partition_idle_s=2.0)
    ensure_topics(settings, {settings.topic_usage: 4})
    events = [usage(i, ts_ms=BASE_MS + i * 1000, labels={"team": f"team-{i % 400}"})
              for i in range(150_000)]
    messages = produce(settings, events, per_message=50)  # all waiting before the worker starts
    worker = start_worker(settings)

    def served_requests(worker: WorkerProcess) -> int:
        rows = worker.allocation("2023-11-14T00:00:00Z,2023-11-17T00:00:00Z", "model")
        return sum(int(row["requests"]) for row in rows.values())

    # SIGTERM a quarter of the way (read from the store, which is quicker to ask than the
    # worker, and ready before it): shutdown applies what it holds and stops; the restart
    # reads the rest from the stored offsets.
    deadline = time.monotonic() + 120
    while applied_messages(settings) < messages / 4:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.01)
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(SIGTERM_DEADLINE_S + 10)
    took = time.monotonic() - signalled
    assert took < SIGTERM_DEADLINE_S, f"exit took {took:.1f}s\n{worker.log_tail()}"
    assert code == 0, worker.log_tail()
    assert applied_messages(settings) < messages  # else nothing was left for the restart

    restarted = start_worker(settings)
    restarted.wait_ready()
    restarted.wait_for(lambda: served_requests(restarted) >= len(events)
                       or restarted.metric("costflux_deadletter_total", reason="late") > 0,
                       180, "serving the backlog")
    assert restarted.metric("costflux_deadletter_total", reason="late") == 0
    assert_exact(restarted.allocation("2023-11-14T00:00:00Z,2023-11-17T00:00:00Z", "model"),
                 [iso(e) for e in events])
