"""A backlog far longer than the state retention, with the combiner behind ingest.

Ingest reads a backlog in big flushes and publishes each one's watermark at once; the combiner
folds the partials of those flushes later. Windows must close on what the combiner has
applied, not on how far ingest has read: else partials still queued for it are dead-lettered
as ``late`` (1 % of a 2.8-hour backlog of 2 M events was, in bench/scale.py). A SIGTERM in
the middle must still exit promptly (Faust's shutdown waited for ever on the partials the
combiner had taken but not acknowledged) and lose nothing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from costflux.settings import Settings
from streams.kafka import ensure_topics
from tests.integration.test_faults import BASE_MS, assert_exact, iso, usage
from tests.integration.test_resilience import SIGTERM_DEADLINE_S, produce
from tests.integration.worker_process import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def test_a_backlog_past_the_retention_with_the_combiner_behind_and_a_sigterm_counts_all(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    # 16.7 hours of event time, one event a second, 400 teams: each flush of the backlog
    # carries thousands of window shards with many rows each, so the combiner falls seconds
    # (hours of event time) behind ingest, while a window is kept only 60 s past its end.
    # (The GPU topic's partitions, silent, stop holding the watermark after 2 s.)
    settings = settings_for(topic_partitions=4, state_retention_s=60, allowed_lateness_s=0,
                            partition_idle_s=2.0, table_store="rocksdb")
    ensure_topics(settings, {settings.topic_usage: 4})
    events = [usage(i, ts_ms=BASE_MS + i * 1000, labels={"team": f"team-{i % 400}"})
              for i in range(60_000)]
    produce(settings, events, per_message=50)  # all of it waiting before the worker starts
    worker = start_worker(settings)
    worker.wait_ready()

    def served_requests(worker: WorkerProcess) -> int:
        rows = worker.allocation("2023-11-14T00:00:00Z,2023-11-16T00:00:00Z", "model")
        return sum(int(row["requests"]) for row in rows.values())

    # SIGTERM once ingest has read the backlog: the combiner is still folding partials (taken,
    # not yet acknowledged), and shutdown must neither wait on them for ever nor commit past
    # them.
    worker.wait_for(lambda: worker.metric("costflux_ingest_events_total") >= len(events),
                    120, "ingesting the backlog")
    behind = served_requests(worker) < len(events)
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    code = worker.process.wait(SIGTERM_DEADLINE_S + 10)
    took = time.monotonic() - signalled
    assert took < SIGTERM_DEADLINE_S, f"exit took {took:.1f}s\n{worker.log_tail()}"
    assert code == 0, worker.log_tail()
    assert behind  # else this test no longer tests a stop with the combiner behind

    restarted = start_worker(settings)
    restarted.wait_ready()
    restarted.wait_for(lambda: served_requests(restarted) >= len(events)
                       or restarted.metric("costflux_deadletter_total", reason="late") > 0,
                       180, "serving the backlog")
    assert restarted.metric("costflux_deadletter_total", reason="late") == 0
    assert_exact(restarted.allocation("2023-11-14T00:00:00Z,2023-11-16T00:00:00Z", "model"),
                 [iso(e) for e in events])
    # Windows did close and leave the table (the retention is not just never reached).
    restarted.wait_for(lambda: "evicted" in restarted.log_path.read_text(errors="replace"),
                       30, "evicting closed windows")
