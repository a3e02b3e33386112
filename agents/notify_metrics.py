"""``costflux notify``'s Prometheus metrics, read from the running notifier when scraped.

A collector rather than counters of its own: the notifier's ``NotifyStats`` already counts
every outcome once, so the metrics cannot drift from the log line it prints on exit. No
label carries the webhook URL.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from costflux.agents.notify import Notifier

__all__ = ["NotifyCollector"]


class NotifyCollector(Collector):
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    def collect(self) -> Iterator[Metric]:
        stats = self._notifier.stats
        for name, documentation, value in (
            ("costflux_notify_delivered", "notices posted to the webhook", stats.delivered),
            ("costflux_notify_duplicates", "notices skipped: already posted (by any instance)",
             stats.duplicates),
            ("costflux_notify_deadlettered", "messages sent to the dead-letter topic instead "
             "(not an alert, webhook rejected or unavailable)", stats.deadlettered),
            ("costflux_notify_redis_retries", "Redis calls that failed and were tried again",
             stats.redis_retries),
        ):
            yield CounterMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily("costflux_notify_assigned_partitions",
                                "alert-topic partitions this instance reads now",
                                value=len(self._notifier.partitions))
