"""Usage-event producer: orjson-encoded events, one per message or many as one JSON array."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from costflux.core.errors import UnavailableError

__all__ = ["ProducerError", "UsageProducer"]

#: A batch is sent early once it reaches this size, so that events with large labels stay well
#: under Kafka's default 1 MB message limit whatever ``events_per_message`` says.
MAX_BATCH_BYTES: Final = 256 * 1024
#: Delivery errors kept verbatim for the exception message; the rest are only counted so a dead
#: broker cannot grow memory without bound.
_MAX_ERROR_DETAILS: Final = 10
#: How long to serve callbacks while librdkafka's local queue is full before retrying produce().
_QUEUE_FULL_POLL_S: Final = 0.1


class ProducerError(UnavailableError):
    """One or more messages could not be handed to Kafka or delivered by it."""


class UsageProducer:
    """Send usage events to a topic, batching many events into one JSON-array message.

    Idempotence, acks and the partitioner come from ``config`` (a librdkafka dict). With
    ``events_per_message=1`` every event is its own message keyed by its ``event_id``, so a
    re-sent event lands in the same partition as the first copy; otherwise events are buffered
    and sent as one JSON array keyed by the batch's first ``event_id``. Delivery failures are
    collected and raised as :class:`ProducerError` by :meth:`flush` and :meth:`close`.

    >>> with UsageProducer({"bootstrap.servers": "127.0.0.1:9092"}, "llm.usage.v1") as out:
    ...     out.send({"event_id": "r1", "ts": "2024-05-01T12:00:00Z", "model": "gpt-4",
    ...               "input_tokens": 100, "output_tokens": 20})  # doctest: +SKIP
    """

    def __init__(
        self, config: Mapping[str, str], topic: str, *, events_per_message: int = 100
    ) -> None:
        if events_per_message < 1:
            raise ValueError(f"events_per_message must be at least 1, got {events_per_message}")
        if not topic:
            raise ValueError("topic must be a non-empty topic name")
        self._topic = topic
        self._events_per_message = events_per_message
        self._producer = Producer(dict(config))
        # Events are copied into one growing buffer rather than held as separate orjson results,
        # which each keep a ~4 KiB allocation alive.
        self._batch = bytearray()
        self._batch_events = 0
        self._batch_key: bytes | None = None
        self._error_details: list[str] = []
        self._error_count = 0
        self._events_sent = 0
        self._messages_sent = 0
        self._closed = False

    @property
    def topic(self) -> str:
        """Topic every message goes to."""
        return self._topic

    @property
    def events_sent(self) -> int:
        """Events handed to librdkafka so far (not counting a partial batch still buffered)."""
        return self._events_sent

    @property
    def messages_sent(self) -> int:
        """Kafka messages handed to librdkafka so far."""
        return self._messages_sent

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue one usage event; it goes out now or with its batch."""
        self._check_open()
        try:
            # orjson encodes dicts only; other mappings (e.g. MappingProxyType) are copied.
            encoded = orjson.dumps(event if isinstance(event, dict) else dict(event))
        except TypeError as exc:
            raise ProducerError(f"event cannot be encoded as JSON: {exc}") from exc
        key = _event_key(event)
        if self._events_per_message == 1:
            self._produce(encoded, key, events=1)
            return
        if self._batch_events and len(self._batch) + len(encoded) + 2 > MAX_BATCH_BYTES:
            self.send_partial_batch()
        if self._batch_events == 0:
            self._batch_key = key
            self._batch += b"["
        else:
            self._batch += b","
        self._batch += encoded
        self._batch_events += 1
        if self._batch_events >= self._events_per_message:
            self.send_partial_batch()

    def send_raw(self, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as one message, as is; for feeding malformed input to the pipeline."""
        self._check_open()
        # A buffered batch goes first so that messages leave in the order they were given.
        self.send_partial_batch()
        self._produce(value, key, events=0)

    def send_partial_batch(self) -> None:
        """Hand the buffered events to librdkafka now, without waiting for delivery."""
        if not self._batch_events:
            return
        self._batch += b"]"
        value = bytes(self._batch)
        key, events = self._batch_key, self._batch_events
        self._batch.clear()
        self._batch_events = 0
        self._batch_key = None
        self._produce(value, key, events=events)

    def flush(self, timeout: float = 30.0) -> None:
        """Send any partial batch and wait for every delivery; raise if any failed."""
        self._check_open()
        self.send_partial_batch()
        self._wait_and_raise(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Flush and release the client; raise ProducerError if deliveries failed."""
        if self._closed:
            return
        try:
            self.send_partial_batch()
            self._wait_and_raise(timeout)
        finally:
            self._closed = True
            # What ``timeout`` left undelivered is dropped now (and was reported above):
            # Producer.close() would otherwise wait for it up to message.timeout.ms (5 min by
            # default) with the broker away, whatever ``timeout`` said.
            if len(self._producer):
                self._producer.purge()
                self._producer.poll(0)
            # Producer.close() only exists in newer confluent-kafka; older ones free on collection.
            release = getattr(self._producer, "close", None)
            if release is not None:
                release()

    def __enter__(self) -> UsageProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # The body's own exception explains more than a delivery failure it may have caused.
        with contextlib.suppress(ProducerError):
            self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ProducerError(f"producer for {self._topic!r} is closed")

    def _produce(self, value: bytes, key: bytes | None, *, events: int) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value, key, on_delivery=self._on_delivery)
                break
            except BufferError:
                # librdkafka's local queue is full: serve delivery reports until it drains.
                self._producer.poll(_QUEUE_FULL_POLL_S)
            except KafkaException as exc:
                raise ProducerError(f"cannot produce to {self._topic!r}: {_describe(exc)}") from exc
        self._events_sent += events
        self._messages_sent += 1
        # Serving callbacks on every produce keeps the delivery-report queue short.
        self._producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self._error_count += 1
        if len(self._error_details) < _MAX_ERROR_DETAILS:
            self._error_details.append(
                f"{msg.topic()}[{msg.partition()}] key={msg.key()!r}: {err.str()}"
            )

    def _wait_and_raise(self, timeout: float) -> None:
        undelivered = self._producer.flush(timeout)
        failures, details = self._error_count, self._error_details
        self._error_count, self._error_details = 0, []
        problems = []
        if failures:
            shown = "; ".join(details)
            more = f" (+{failures - len(details)} more)" if failures > len(details) else ""
            problems.append(f"{failures} message(s) failed delivery: {shown}{more}")
        if undelivered:
            problems.append(f"{undelivered} message(s) still undelivered after {timeout:g} s")
        if problems:
            raise ProducerError(f"topic {self._topic!r}: " + "; ".join(problems))


def _event_key(event: Mapping[str, Any]) -> bytes | None:
    event_id = event.get("event_id")
    # A missing or non-string id is the pipeline's to dead-letter; the producer only keys by it.
    return event_id.encode() if isinstance(event_id, str) else None


def _describe(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
