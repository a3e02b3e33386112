"""``costflux bridge prometheus``: scrape an inference server's /metrics into usage events.

The pure half (which counters, increases, resets, carry-over, splitting into events, which
queue gauges) is ``costflux.core.bridge``; this module fetches the page, parses it with
prometheus_client's own parser, keeps time, hands the events to Kafka (or stdout), reports
failed scrapes and re-exports the server's request queue on the bridge's own /metrics.

The queue gauges (``costflux_inference_requests_waiting`` and ``_running``, by model and
source) show the last good scrape and nothing else: a failed scrape removes them, so
Prometheus marks the series stale at its next scrape of the bridge instead of an autoscaler
acting on a queue length nobody has seen for minutes.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Final

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from costflux.core.bridge import (
    BridgeError,
    CounterBridge,
    EventTemplate,
    FlagRequired,
    Observation,
    RequestQueue,
    ServerKind,
    Tally,
    read_counters,
    read_request_queues,
)
from costflux.core.errors import ConfigError, CostfluxError, UnavailableError
from costflux.http_clients import client, no_answer_reason
from costflux.settings import Settings
from costflux.streams.kafka import KafkaSetupError, ensure_topics, producer_config
from costflux.streams.producer import ProducerError, UsageProducer

__all__ = [
    "BridgeMetrics",
    "BridgeOptions",
    "BridgeSettings",
    "BridgeStatus",
    "PrometheusBridge",
    "QUEUE_LABELS",
    "ScrapeError",
    "fetch_metrics_page",
    "parse_metrics_page",
    "run_bridge",
    "scrape_until_stopped",
    "send_to_kafka",
]

log = logging.getLogger(__name__)

#: A /metrics page larger than this is not an inference server's (vLLM's is ~20-100 KiB).
MAX_PAGE_BYTES: Final = 16 * 1024 * 1024
#: Events kept for re-sending while Kafka is unreachable; beyond it the oldest are dropped
#: (and logged) so that a long broker outage cannot exhaust memory.
MAX_UNSENT_EVENTS: Final = 100_000
#: The classic text format: prometheus_client's text parser reads it, not OpenMetrics.
_ACCEPT: Final = "text/plain;version=0.0.4;q=1.0, */*;q=0.1"


class ScrapeError(UnavailableError):
    """The metrics page could not be fetched or read; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class BridgeOptions:
    """What each scrape needs, validated at the command line (``costflux.cli.bridge``)."""

    url: str
    interval_s: float
    timeout_s: float
    kind: ServerKind | None
    model: str | None
    template: EventTemplate


@dataclass(frozen=True)
class BridgeSettings:
    """What ``costflux bridge prometheus`` was told, read from its flags and environment at
    the command line (``costflux.cli.bridge``): the scrape, and what to do with it."""

    scrape: BridgeOptions
    once: bool = False  # two scrapes (the baseline and one interval), then exit
    print_only: bool = False  # events to stdout as JSON lines, not Kafka
    metrics_port: int | None = None  # serve the bridge's own /metrics on this port


def fetch_metrics_page(
    url: str, timeout_s: float, transport: httpx.BaseTransport | None = None
) -> str:
    """GET the page; every failure is a ScrapeError with a reason code."""
    try:
        with (
            client(timeout_s=timeout_s, headers={"Accept": _ACCEPT}, follow_redirects=True,
                   transport=transport) as http,
            http.stream("GET", url) as response,
        ):
            if not 200 <= response.status_code < 300:
                raise ScrapeError("http_status", f"{url} answered {response.status_code} "
                                  f"{response.reason_phrase}")
            body = _read_at_most(response, MAX_PAGE_BYTES + 1)
    except httpx.TooManyRedirects:
        raise ScrapeError("http_status", f"{url}: too many redirects") from None
    except httpx.DecodingError:
        raise ScrapeError("unparsable", f"{url}: its Content-Encoding does not decode") from None
    except httpx.TimeoutException:
        raise ScrapeError("timeout", f"{url}: no answer within {timeout_s:g} s") from None
    except httpx.TransportError as exc:  # refused, reset by peer while reading, ...
        raise ScrapeError("connection", f"{url}: {exc or no_answer_reason(exc)}") from None
    if len(body) > MAX_PAGE_BYTES:
        raise ScrapeError("unparsable", f"{url}: page over {MAX_PAGE_BYTES} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScrapeError("unparsable", f"{url}: not UTF-8 text ({exc})") from None


def _read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The body's first ``limit`` bytes, read no further: a huge page is not held whole."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def parse_metrics_page(text: str) -> list[Sample]:
    """Every sample of a Prometheus text page, read by prometheus_client's parser."""
    try:
        return [
            sample
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise ScrapeError("unparsable", f"not Prometheus text format ({exc})") from None


@dataclass
class BridgeStatus:
    """What the scrape loop has done so far; read it for health and tests."""

    scrapes: int = 0
    scrape_errors: int = 0
    consecutive_errors: int = 0
    last_error: str | None = None
    last_success_ms: int | None = None
    counter_resets: int = 0
    events_sent: int = 0
    events_unsent: int = 0
    carried: Mapping[str, Tally] = field(default_factory=dict)
    #: Per model, the request queue of the last good scrape; empty after a failed one.
    queues: Mapping[str, RequestQueue] = field(default_factory=dict)


#: Labels of the queue gauges: the model as the usage events name it (so its cost series
#: match), and the scraped server as event ids name it (--source).
QUEUE_LABELS: Final = ("model", "source")


class BridgeMetrics:
    """The bridge's own Prometheus counters, and the scraped server's queue, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.scrapes = Counter("costflux_bridge_scrapes", "Successful scrapes of the inference "
                               "server's /metrics", registry=registry)
        self.scrape_errors = Counter("costflux_bridge_scrape_errors", "Failed scrapes, by "
                                     "reason", ["reason"], registry=registry)
        self.counter_resets = Counter("costflux_bridge_counter_resets", "Scrapes in which a "
                                      "counter went down or the server restarted",
                                      registry=registry)
        self.events = Counter("costflux_bridge_usage_events", "Usage events handed to the "
                              "output", registry=registry)
        self.requests_waiting = Gauge("costflux_inference_requests_waiting",
                                      "Requests waiting for a place in the inference server's "
                                      "running batch, at the last good scrape "
                                      "(vllm:num_requests_waiting, tgi_queue_size)",
                                      QUEUE_LABELS, registry=registry)
        self.requests_running = Gauge("costflux_inference_requests_running", "Requests in the "
                                      "inference server's running batch, at the last good "
                                      "scrape (vllm:num_requests_running, "
                                      "tgi_batch_current_size)", QUEUE_LABELS,
                                      registry=registry)


class PrometheusBridge:
    """One inference server: scrape, turn counter growth into events, send them.

    ``send`` gets each scrape's events (with any a failed send left behind) and raises
    ProducerError if they were not delivered; they are then sent again with the next batch,
    with the same event ids, so a partly delivered batch still counts once.
    """

    def __init__(
        self,
        options: BridgeOptions,
        send: Callable[[Sequence[Mapping[str, Any]]], None],
        *,
        fetch: Callable[[str, float], str] = fetch_metrics_page,
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self._options = options
        self._send = send
        self._fetch = fetch
        self._metrics = metrics or BridgeMetrics(CollectorRegistry())
        self._counters = CounterBridge(options.template)
        self._unsent: list[Mapping[str, Any]] = []
        self._queue_series: set[tuple[str, str]] = set()  # ("waiting"/"running", model) shown
        self.status = BridgeStatus()

    def scrape(self) -> Observation | None:
        """Scrape once; return what the page said, or None if the scrape failed.

        A page the flags cannot read (TGI without --model) raises FlagRequired: retrying
        will not help.
        """
        options = self._options
        try:
            text = self._fetch(options.url, options.timeout_s)
            end_ms = time.time_ns() // 1_000_000
            samples = parse_metrics_page(text)
            page = read_counters(samples, kind=options.kind, model=options.model)
            queues = read_request_queues(samples, kind=page.kind, model=options.model)
        except ScrapeError as exc:
            self._failed(exc)
            return None
        except FlagRequired:
            raise
        except BridgeError as exc:
            self._failed(ScrapeError("bad_page", str(exc)))
            return None
        observation = self._counters.observe(page, end_ms)
        self._succeeded(observation, end_ms)
        self._show_queues(queues)
        self._deliver(observation.events)
        return observation

    def retry_unsent(self) -> None:
        """Try once more to send what earlier sends left behind (e.g. at shutdown)."""
        self._deliver([])

    def _failed(self, error: ScrapeError) -> None:
        status = self.status
        status.scrape_errors += 1
        status.consecutive_errors += 1
        status.last_error = str(error)
        self._metrics.scrape_errors.labels(error.reason).inc()
        # Nobody knows the queue now: its series go (stale), they never keep an old value.
        self._show_queues({})
        # Nothing is zero-filled: the next good scrape's increase covers the gap.
        log.warning("scrape %d in a row failed, retrying in %g s: %s",
                    status.consecutive_errors, self._options.interval_s, error)

    def _succeeded(self, observation: Observation, end_ms: int) -> None:
        status = self.status
        if status.consecutive_errors:
            log.info("%s answers again after %d failed scrape(s); this interval covers the gap",
                     self._options.url, status.consecutive_errors)
        status.scrapes += 1
        status.consecutive_errors = 0
        status.last_success_ms = end_ms
        status.carried = observation.carried
        self._metrics.scrapes.inc()
        if observation.baseline:
            log.info("baseline taken from %s; events start with the next scrape",
                     self._options.url)
        if observation.restarted or observation.resets:
            status.counter_resets += 1
            self._metrics.counter_resets.inc()
            what = "server restarted" if observation.restarted else ", ".join(observation.resets)
            log.warning("counter reset (%s): counting the new values from zero", what)
        if observation.cached_capped:
            log.debug("%d cached tokens over the interval's input tokens not billed as cached",
                      observation.cached_capped)

    def _show_queues(self, queues: Mapping[str, RequestQueue]) -> None:
        """Set the queue gauges to this page's values; remove every series it lacks."""
        source = self._options.template.source
        gauges = {"waiting": self._metrics.requests_waiting,
                  "running": self._metrics.requests_running}
        shown: set[tuple[str, str]] = set()
        for model, queue in queues.items():
            for part, value in (("waiting", queue.waiting), ("running", queue.running)):
                if value is not None:
                    gauges[part].labels(model, source).set(value)
                    shown.add((part, model))
        for part, model in self._queue_series - shown:
            gauges[part].remove(model, source)
        self._queue_series = shown
        self.status.queues = dict(queues)

    def _deliver(self, events: Sequence[Mapping[str, Any]]) -> None:
        batch = [*self._unsent, *events]
        if not batch:
            return
        try:
            self._send(batch)
        except ProducerError as exc:
            dropped = max(0, len(batch) - MAX_UNSENT_EVENTS)
            self._unsent = batch[dropped:]
            if dropped:
                log.error("%d usage events dropped: Kafka unreachable for too long", dropped)
            log.error("%d usage events not delivered, kept to send again: %s", len(batch), exc)
        else:
            self._unsent = []
            self.status.events_sent += len(batch)
            self._metrics.events.inc(len(batch))
        self.status.events_unsent = len(self._unsent)


def scrape_until_stopped(
    bridge: PrometheusBridge, interval_s: float, stop: threading.Event, *, once: bool = False
) -> None:
    """Scrape every ``interval_s`` (a slow scrape skips slots, never bunches up) until stopped.

    ``once``: two scrapes, the baseline and one interval.
    """
    for attempt in _ticks(interval_s, stop):
        bridge.scrape()
        if once and attempt == 1:
            return


def _ticks(interval_s: float, stop: threading.Event) -> Iterator[int]:
    due = time.monotonic()
    attempt = 0
    while not stop.is_set():
        yield attempt
        attempt += 1
        due += interval_s
        late = time.monotonic() - due
        if late > 0:
            due += math.ceil(late / interval_s) * interval_s
        stop.wait(max(0.0, due - time.monotonic()))


def run_bridge(bridge_settings: BridgeSettings, settings: Settings) -> int:
    """The command: scrape until SIGTERM/Ctrl-C (or twice with --once), publish or print;
    what stops it at once is a CostfluxError for ``costflux.cli.main`` to print."""
    options = bridge_settings.scrape
    producer: UsageProducer | None = None
    send: Callable[[Sequence[Mapping[str, Any]]], None]
    if bridge_settings.print_only:
        send = _print_events
    else:
        if settings.kafka_bootstrap is None:
            raise ConfigError("set COSTFLUX_KAFKA_BOOTSTRAP to the broker to publish to, or "
                              "pass --print")
        try:
            ensure_topics(settings, {settings.topic_usage: settings.topic_partitions})
        except KafkaSetupError as exc:
            # Exit 1, the bridge's code for this before the error kinds (69 would be new).
            raise CostfluxError(str(exc)) from exc
        producer = UsageProducer(producer_config(settings), settings.topic_usage)
        send = send_to_kafka(producer)
    registry = CollectorRegistry()
    bridge = PrometheusBridge(options, send, metrics=BridgeMetrics(registry))
    server = None
    metrics_port = bridge_settings.metrics_port
    if metrics_port is not None:
        try:
            # All interfaces (S104): Prometheus scrapes the bridge from another pod.
            server, _ = start_http_server(metrics_port, "0.0.0.0", registry)  # noqa: S104
        except OSError as exc:
            if producer is not None:
                _close_logging_failures(producer)
            raise CostfluxError(f"--metrics-port {metrics_port}: {exc}") from exc
    stop = threading.Event()
    restore = _stop_on_signals(stop)
    try:
        scrape_until_stopped(bridge, options.interval_s, stop, once=bridge_settings.once)
    except FlagRequired as exc:  # an InputError (65) by kind; a flag to pass is exit 2
        raise ConfigError(str(exc)) from exc
    finally:
        restore()
        bridge.retry_unsent()
        if producer is not None:
            _close_logging_failures(producer)
        if server is not None:
            server.shutdown()
            server.server_close()
    _log_summary(bridge.status)
    failed = bridge.status.scrape_errors or bridge.status.events_unsent
    return 1 if bridge_settings.once and failed else 0


def _print_events(events: Sequence[Mapping[str, Any]]) -> None:
    for event in events:
        sys.stdout.write(orjson.dumps(dict(event)).decode() + "\n")
    sys.stdout.flush()


def send_to_kafka(producer: UsageProducer) -> Callable[[Sequence[Mapping[str, Any]]], None]:
    """A send function for PrometheusBridge: queue the events, wait for their delivery."""

    def send(events: Sequence[Mapping[str, Any]]) -> None:
        for event in events:
            producer.send(event)
        producer.flush(10)

    return send


def _close_logging_failures(producer: UsageProducer) -> None:
    try:
        producer.close(10)
    except ProducerError as exc:
        log.error("usage events not delivered at shutdown: %s", exc)


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers can only be set from the main thread

    def handle(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current scrape", signum)
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


def _log_summary(status: BridgeStatus) -> None:
    log.info("bridge stopped: %d scrapes, %d failed, %d counter resets, %d events sent, "
             "%d unsent", status.scrapes, status.scrape_errors, status.counter_resets,
             status.events_sent, status.events_unsent)
    for model, carry in status.carried.items():
        # Requests still running: they finish after this run's last scrape, and the next run
        # starts from a new baseline, so these tokens are not billed by either.
        log.warning("%s: %d input / %d output tokens of unfinished requests not emitted",
                    model, carry.input_tokens, carry.output_tokens)
