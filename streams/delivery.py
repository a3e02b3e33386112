"""A Kafka producer whose deliveries an asyncio caller awaits: acknowledge only what Kafka has.

librdkafka calls back from ``poll``; a thread polls, and each callback resolves the awaiting
request's future on its event loop. The producer is idempotent (``producer_config``), so a
retry inside librdkafka never writes a message twice.

A failed delivery renews the producer. An idempotent producer whose messages timed out
must agree a new epoch with the broker before it sends again; one that cannot (measured: a
broker that came back without its state) times out everything after, for good. Nothing
acknowledged depends on the old one: its requests were answered with an error, and the
copies their clients resend are counted once downstream.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final

from confluent_kafka import KafkaError, Message, Producer

from costflux.core.errors import UnavailableError

__all__ = ["AsyncDelivery", "DeliveryError", "Record"]

#: How long a full local queue is waited on before produce() is tried again.
_QUEUE_FULL_WAIT_S: Final = 0.01
_POLL_S: Final = 0.1

Record = tuple[str, bytes | None, bytes]  # topic, key, value


class DeliveryError(UnavailableError):
    """Kafka did not take every record; none of them may be acknowledged to the sender."""


class AsyncDelivery:
    """Send records and wait until Kafka has them all (acks=all), or say why not."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._producer = Producer(self._config)
        self._retiring: list[Producer] = []  # renewed away, polled until their queue is empty
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="delivery-poll", daemon=True)
        self._poller.start()

    async def send(self, records: Sequence[Record]) -> None:
        """Return once every record is written to its topic; raise DeliveryError otherwise."""
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[None]] = []
        producer = self._producer
        for topic, key, value in records:
            future: asyncio.Future[None] = loop.create_future()
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=_resolver(loop, future))
                    break
                except BufferError:
                    await asyncio.sleep(_QUEUE_FULL_WAIT_S)  # the poll thread drains it
            pending.append(future)
        results = await asyncio.gather(*pending, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            self._renew(producer)
            raise DeliveryError(f"{len(errors)} of {len(records)} records not delivered: "
                                f"{errors[0]}")

    def _renew(self, failed: Producer) -> None:
        """Replace ``failed`` unless another request already did; its queued records fail
        now (their requests are answered 503), not at their timeout."""
        with self._lock:
            if failed is not self._producer:
                return
            self._producer = Producer(self._config)
            self._retiring.append(failed)
        failed.purge()

    def topic_exists(self, topic: str, timeout_s: float) -> bool:
        """Whether the broker answers and knows ``topic`` (blocking; run it off the loop)."""
        # All topics: a request naming one makes brokers with auto-creation on create it.
        metadata = self._producer.list_topics(timeout=timeout_s)
        found = metadata.topics.get(topic)
        return found is not None and found.error is None

    def close(self, timeout_s: float = 10.0) -> int:
        """Deliver what is queued, stop polling; return how many records were left."""
        self._stopping.set()
        self._poller.join()
        return int(self._producer.flush(timeout_s))

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(_POLL_S)
            with self._lock:
                retiring = list(self._retiring)
            for old in retiring:
                old.poll(0)
                if len(old) == 0:
                    with self._lock:
                        self._retiring.remove(old)


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> Any:
    def delivered(error: KafkaError | None, _message: Message) -> None:
        loop.call_soon_threadsafe(_settle, future, error)
    return delivered


def _settle(future: asyncio.Future[None], error: KafkaError | None) -> None:
    if future.done():  # the request was cancelled (its client went away)
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(DeliveryError(error.str()))
