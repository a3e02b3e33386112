"""``costflux collect``: usage in over HTTP, from OTLP traces and CloudEvents, out to Kafka.

A request is answered only once Kafka has its events and its dead letters (idempotent
producer, acks=all): a 2xx means nothing of it is lost, a receiver killed mid-request has
acknowledged nothing, and the client's retry is deduplicated downstream by event id. The
process keeps no state: run as many replicas as the load needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from costflux.core.collect import (
    CloudEventInput,
    Judged,
    batch_messages,
    judge_cloudevents,
    judge_spans,
)
from costflux.core.events import Rejected, deadletter_record
from costflux.core.genai_spans import READ_ATTRIBUTES, SpanMapping
from costflux.schemas.deadletter import DeadLetterReason
from costflux.streams.delivery import AsyncDelivery, DeliveryError, Record
from costflux.streams.otlp import OtlpDecodeError, answer, read_json, read_protobuf, span_document

__all__ = ["CollectorConfig", "UsageCollector"]

log = logging.getLogger("costflux.collect")

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
_CE_ONE = "application/cloudevents+json"
_CE_BATCH = "application/cloudevents-batch+json"
#: Answered to a client whose events Kafka did not take: retry after this many seconds.
_RETRY_AFTER_S: Final = "1"
_READY_CHECK_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """What the collector needs to know (built from Settings by the CLI)."""

    usage_topic: str
    deadletter_topic: str
    span_mapping: SpanMapping
    cloudevent_type: str
    subject_label: str
    max_body_bytes: int


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("costflux_collect_requests", "HTTP requests answered, by "
                                "endpoint and status code", ["endpoint", "code"],
                                registry=self.registry)
        self.received = Counter("costflux_collect_received", "spans or CloudEvents received",
                                ["protocol"], registry=self.registry)
        self.converted = Counter("costflux_collect_converted", "usage events sent to Kafka",
                                 ["protocol"], registry=self.registry)
        self.ignored = Counter("costflux_collect_ignored", "spans that carry no inference "
                               "usage (no_usage, not_inference)", ["protocol", "reason"],
                               registry=self.registry)
        self.rejected = Counter("costflux_collect_rejected", "items or whole requests "
                                "refused, by reason code (the dead-letter topic's codes, or "
                                "unsupported_media_type, body_too_large, malformed_body)",
                                ["protocol", "reason"], registry=self.registry)
        self.delivery_failures = Counter("costflux_collect_delivery_failures", "requests "
                                         "answered 503 because Kafka did not take their "
                                         "records", registry=self.registry)
        self.delivery_seconds = Histogram(
            "costflux_collect_delivery_seconds", "time from a request's records handed to "
            "the producer until Kafka acknowledged all of them", registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))

    def count(self, protocol: str, judged: Judged) -> None:
        self.received.labels(protocol).inc(judged.received)
        self.converted.labels(protocol).inc(len(judged.events))
        for reason, items in judged.ignored.items():
            self.ignored.labels(protocol, reason).inc(items)
        for _, rejected in judged.rejected:
            self.rejected.labels(protocol, rejected.reason.value).inc()


class _Refused(Exception):
    """A whole request refused before its items were read: status, reason code, message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


class UsageCollector:
    """The HTTP routes of ``costflux collect``; ``app()`` is the aiohttp application."""

    def __init__(self, config: CollectorConfig, delivery: AsyncDelivery) -> None:
        self._config = config
        self._delivery = delivery
        self._metrics = _Metrics()
        self._ready = False
        self._ready_check: asyncio.Task[None] | None = None
        self._last_delivery_failed = False
        self._label_sources = frozenset(a for a, _ in config.span_mapping.labels)
        self._read_keys = READ_ATTRIBUTES | self._label_sources

    def app(self) -> web.Application:
        # The body limit is checked by aiohttp as it reads (413) and again after gzip.
        app = web.Application(client_max_size=self._config.max_body_bytes)
        app.router.add_post("/v1/traces", self._counted("/v1/traces", self._traces))
        app.router.add_post("/v1/events", self._counted("/v1/events", self._events))
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.on_startup.append(self._start)
        return app

    async def _start(self, _app: web.Application) -> None:
        self._watch_readiness()

    def _watch_readiness(self) -> None:
        """Not ready until the broker answers for the usage topic, checked in the background
        (at start-up, and after a request's records were refused). Readiness must recover
        without traffic: an unready replica gets none."""
        self._ready = False
        if self._ready_check is None or self._ready_check.done():
            self._ready_check = asyncio.create_task(self._check_ready_until_ready())

    async def _check_ready_until_ready(self) -> None:
        topic = self._config.usage_topic
        while not self._ready:
            try:
                self._ready = await asyncio.to_thread(self._delivery.topic_exists, topic,
                                                      _READY_CHECK_S)
            except Exception as exc:  # noqa: BLE001 - any broker error: not ready yet, retry
                log.warning("broker not reachable yet (%s); retrying", type(exc).__name__)
            if not self._ready:
                await asyncio.sleep(1.0)
        log.info("ready: topic %s reachable", topic)

    def _counted(self, endpoint: str, handler: Callable[[web.Request], Awaitable[web.Response]]
                 ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                response = await handler(request)
            except web.HTTPRequestEntityTooLarge:
                protocol = "otlp" if endpoint == "/v1/traces" else "cloudevents"
                self._metrics.rejected.labels(protocol, "body_too_large").inc()
                response = _problem(413, f"the body is larger than the limit of "
                                    f"{self._config.max_body_bytes} bytes "
                                    "(COSTFLUX_COLLECT_MAX_BODY_BYTES); send smaller batches")
            self._metrics.requests.labels(endpoint, str(response.status)).inc()
            return response
        return handle

    async def _traces(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        as_json = content_type == _JSON
        try:
            if content_type not in (_PROTOBUF, _JSON):
                raise _Refused(415, "unsupported_media_type",
                               f"Content-Type {content_type!r}: OTLP/HTTP takes "
                               f"{_PROTOBUF} or {_JSON}")
            body = await self._body(request)
            try:
                spans = read_json(body) if as_json else read_protobuf(body, self._read_keys)
            except OtlpDecodeError as exc:
                await self._deadletter_body(body, "/v1/traces", str(exc))
                raise _Refused(400, "malformed_body", str(exc)) from None
        except _Refused as refused:
            self._metrics.rejected.labels("otlp", refused.reason).inc()
            return _problem(refused.status, refused.message)
        mapping = self._config.span_mapping
        judged = judge_spans(spans, mapping,
                             lambda span: span_document(span, self._label_sources))
        failed = await self._deliver(judged, "/v1/traces")
        if failed is not None:
            return failed
        self._metrics.count("otlp", judged)
        message = "; ".join(f"span {i}: {r.reason.value}: {r.detail}"
                            for i, r in judged.rejected[:10])
        body, answer_type = answer(len(judged.rejected), message, as_json=as_json)
        return web.Response(body=body, content_type=answer_type)

    async def _events(self, request: web.Request) -> web.Response:
        try:
            events = await self._cloudevents(request)
        except _Refused as refused:
            self._metrics.rejected.labels("cloudevents", refused.reason).inc()
            return _problem(refused.status, refused.message)
        judged = judge_cloudevents(events, event_type=self._config.cloudevent_type,
                                   subject_label=self._config.subject_label)
        failed = await self._deliver(judged, "/v1/events")
        if failed is not None:
            return failed
        self._metrics.count("cloudevents", judged)
        accepted = len(judged.events)
        if not judged.rejected:
            return web.json_response({"accepted": accepted})
        problems = [{"index": index, "id": events[index].attributes.get("id"),
                     "reason": rejected.reason.value, "detail": rejected.detail}
                    for index, rejected in judged.rejected]
        return web.json_response({"accepted": accepted, "rejected": problems}, status=400)

    async def _cloudevents(self, request: web.Request) -> list[CloudEventInput]:
        content_type = request.content_type
        binary = "ce-specversion" in request.headers
        if content_type not in (_CE_ONE, _CE_BATCH) and not binary:
            raise _Refused(415, "unsupported_media_type",
                           f"Content-Type {content_type!r} without ce-* headers: send a "
                           f"CloudEvent in structured mode ({_CE_ONE}), batched "
                           f"({_CE_BATCH}) or binary mode (ce-specversion, ce-id, … headers)")
        body = await self._body(request)
        try:
            document = orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            await self._deadletter_body(body, "/v1/events", f"not valid JSON: {exc}")
            raise _Refused(400, "malformed_body", f"not valid JSON: {exc}") from None
        if binary and content_type not in (_CE_ONE, _CE_BATCH):
            # Header values are percent-encoded (CloudEvents HTTP binding, 3.1.3.2).
            attributes = {name[3:].lower(): unquote(value)
                          for name, value in request.headers.items()
                          if name.lower().startswith("ce-")}
            attributes["datacontenttype"] = request.headers.get("Content-Type", _JSON)
            return [CloudEventInput(attributes, document, body)]
        items = document if content_type == _CE_BATCH else [document]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            await self._deadletter_body(body, "/v1/events", "not a CloudEvent JSON object "
                                        "(or, batched, an array of them)")
            raise _Refused(400, "malformed_body", "expected a CloudEvent JSON object (or, "
                           f"with {_CE_BATCH}, an array of them)")
        return [CloudEventInput({k: v for k, v in item.items() if k != "data"},
                                item.get("data"), orjson.dumps(item)) for item in items]

    async def _body(self, request: web.Request) -> bytes:
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding == "gzip":
            return self._gunzip(body)
        if encoding != "identity":
            raise _Refused(415, "unsupported_media_type",
                           f"Content-Encoding {encoding!r}: send gzip or none")
        return body

    def _gunzip(self, body: bytes) -> bytes:
        limit = self._config.max_body_bytes
        inflater = zlib.decompressobj(wbits=31)  # gzip framing
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise _Refused(400, "malformed_body", f"Content-Encoding gzip, but the body is "
                           f"not gzip ({exc})") from None
        if len(data) > limit or inflater.unconsumed_tail:
            raise _Refused(413, "body_too_large", f"the body inflates past the limit of "
                           f"{limit} bytes (COSTFLUX_COLLECT_MAX_BODY_BYTES)")
        return data

    async def _deliver(self, judged: Judged, path: str) -> web.Response | None:
        """Send the events and dead letters; None once Kafka has them all, else the 503."""
        records: list[Record] = [
            (self._config.usage_topic, None, message)
            for message in batch_messages(judged.events)]
        records += [(self._config.deadletter_topic, None, _deadletter(rejected, path))
                    for _, rejected in judged.rejected]
        if not records:
            return None
        started = time.perf_counter()
        try:
            await self._delivery.send(records)
        except DeliveryError as exc:
            self._metrics.delivery_failures.inc()
            if not self._last_delivery_failed:
                log.error("Kafka did not take a request's records (%s); answering 503 until "
                          "it does", exc)
            self._last_delivery_failed = True
            self._watch_readiness()
            return _problem(503, "Kafka did not acknowledge the events; nothing of this "
                            "request was accepted: retry it", retry=True)
        if self._last_delivery_failed:
            log.info("Kafka takes records again")
        self._last_delivery_failed = False
        self._metrics.delivery_seconds.observe(time.perf_counter() - started)
        return None

    async def _deadletter_body(self, body: bytes, path: str, detail: str) -> None:
        """A whole body that could not be read is dead-lettered too: nothing is dropped
        unseen. Best effort: the client is told either way."""
        rejected = Rejected(DeadLetterReason.INVALID_VALUE, detail, None, body)
        try:
            await self._delivery.send([(self._config.deadletter_topic, None,
                                        _deadletter(rejected, path))])
        except DeliveryError as exc:
            log.warning("dead letter of a malformed %s body not delivered (%s)", path, exc)

    async def _metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self._metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        if not self._ready:
            return web.json_response({"status": "unavailable", "reason": "broker or topic "
                                      f"{self._config.usage_topic} not reachable"},
                                     status=503)
        return web.json_response({"status": "ok"})


def _deadletter(rejected: Rejected, path: str) -> bytes:
    # Received over HTTP: no partition or offset; the source names the endpoint.
    return deadletter_record(rejected, f"http:{path}", -1, -1)


def _problem(status: int, message: str, *, retry: bool = False) -> web.Response:
    headers: dict[str, Any] = {"Retry-After": _RETRY_AFTER_S} if retry else {}
    return web.json_response({"code": status, "message": message}, status=status,
                             headers=headers)
