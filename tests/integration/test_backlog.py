"""A backlog of many hours of event time, stopped by SIGTERM part way through.

Ingest reads a backlog in big flushes, each applied to the store with its partition's clock,
so no event of it is ever judged late against another partition's progress (with the
combine stage, 1 % of a 2.8-hour backlog of 2 M events once was). A SIGTERM in the middle
(placed by a failpoint that freezes the worker part way) must exit promptly and lose nothing:
the restarted worker resumes from the stored offsets.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from costflux.settings import Settings
from costflux.streams.kafka import ensure_topics
from tests.integration.stored import applied_messages
from tests.integration.test_exactly_once import frozen
from tests.integration.test_faults import BASE_MS, assert_exact, iso, usage
from tests.integration.test_resilience import SIGTERM_DEADLINE_S, produce
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def test_a_backlog_stopped_by_sigterm_part_way_counts_every_event_once(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    # 69.4 hours of event time, one event a second, 400 teams, no allowed lateness: each
    # flush of the backlog carries hundreds of windows with many rows each. Consuming 50
    # messages at a time, ingest holds at most three 8 MiB flushes when it is told to stop
    # (one applying, one judged, one buffered): well under the backlog's ~62 MB.
    # (The GPU topic's partitions, silent, stop holding the watermark after 2 s.)
    settings = settings_for(topic_partitions=4, allowed_lateness_s=0, partition_idle_s=2.0,
                            ingest_batch_size=50)
    ensure_topics(settings, {settings.topic_usage: 4})
    events = [usage(i, ts_ms=BASE_MS + i * 1000, labels={"team": f"team-{i % 400}"})
              for i in range(250_000)]
    messages = produce(settings, events, per_message=50)  # all waiting before the worker starts
    # Frozen once its first flush is applied (about to commit it), the SIGTERM waiting: once
    # thawed, shutdown applies what it holds and leaves the rest of the backlog.
    worker = start_worker(settings, env={"COSTFLUX_FAILPOINTS": "ingest.before_commit=stop@1"})

    def served_requests(worker: WorkerProcess) -> int:
        rows = worker.allocation("2023-11-14T00:00:00Z,2023-11-19T00:00:00Z", "model")
        return sum(int(row["requests"]) for row in rows.values())

    worker.wait_for(lambda: frozen(worker), 120, "frozen part way through the backlog")
    worker.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    os.kill(worker.process.pid, signal.SIGCONT)
    code = worker.process.wait(SIGTERM_DEADLINE_S + 10)
    took = time.monotonic() - signalled
    assert took < SIGTERM_DEADLINE_S, f"exit took {took:.1f}s\n{worker.log_tail()}"
    assert code == 0, worker.log_tail()
    assert 0 < applied_messages(settings) < messages  # the restart has the rest to do

    restarted = start_worker(settings)
    restarted.wait_ready()
    restarted.wait_for(lambda: served_requests(restarted) >= len(events)
                       or restarted.metric("costflux_deadletter_total", reason="late") > 0,
                       180, "serving the backlog")
    assert restarted.metric("costflux_deadletter_total", reason="late") == 0
    assert_exact(restarted.allocation("2023-11-14T00:00:00Z,2023-11-19T00:00:00Z", "model"),
                 [iso(e) for e in events])
