"""``costflux notify``: alert events from Kafka to a Slack incoming webhook, each one once.

Kafka gives at-least-once (an offset is committed only after its message is delivered,
skipped as a duplicate, or dead-lettered); a Redis claim per (alert_id, state, repeat) turns
that into once at Slack across instances, duplicates and restarts (costflux.agents.notify_redis).

The one window left: a crash after Slack accepted a post and before ``delivered`` is written
lets the claim's lease expire and the notice be posted again, once. Webhooks take no
idempotency key, so no order of writes closes it; the window is one HTTP answer wide.

The webhook URL is the credential: it is kept out of reprs, logs, exceptions, dead letters and
Redis (the rate key holds a hash prefix).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from pydantic import ValidationError

from costflux.agents.notify_redis import ClaimLedger, SlotLimiter, Verdict, claim_key, slot_key
from costflux.core.events import classify_validation_error
from costflux.core.slack import slack_message
from costflux.schemas.alert import AlertEvent
from costflux.schemas.deadletter import DeadLetterReason, DeadLetterRecord
from costflux.streams.redis_retry import REDIS_UNAVAILABLE, until_redis_answers
from costflux.streams.webhook import Delivery, RetryPolicy, post_json

__all__ = ["Notifier", "NotifyOptions", "NotifyStats", "decode_alert"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def decode_alert(value: bytes | None) -> AlertEvent | tuple[DeadLetterReason, str]:
    """The alert in a message, or why it is not one (a dead-letter reason and detail)."""
    try:
        document = orjson.loads(value or b"")
    except orjson.JSONDecodeError as exc:
        return DeadLetterReason.BAD_JSON, f"not valid JSON: {exc}"
    if not isinstance(document, dict):
        return DeadLetterReason.NOT_AN_OBJECT, "expected one AlertEvent JSON object"
    try:
        return AlertEvent.model_validate(document)
    except ValidationError as exc:
        return classify_validation_error(exc)


@dataclass(frozen=True, slots=True)
class NotifyOptions:
    topic: str
    deadletter_topic: str
    namespace: str  # Redis key prefix: instances sharing it post each notice once
    webhook_url: str = field(repr=False)
    min_interval_s: float = 1.0
    policy: RetryPolicy = RetryPolicy()
    lease_s: float = 120.0
    poll_s: float = 0.25  # how often a claim held by another instance is looked at


@dataclass(slots=True)
class NotifyStats:
    delivered: int = 0
    duplicates: int = 0
    deadlettered: int = 0
    redis_retries: int = 0  # Redis calls that failed and were tried again

    @property
    def handled(self) -> int:
        return self.delivered + self.duplicates + self.deadlettered


class _Interrupted(Exception):
    """Stopping, or our claim was lost while waiting: leave the notice to its next holder."""


class Notifier:
    """One instance: consume, claim, wait for a slot, post, record, commit."""

    def __init__(self, options: NotifyOptions, consumer_config: dict[str, Any],
                 producer_config: dict[str, Any], redis_client: redis.Redis,
                 instance: str | None = None) -> None:
        self._options = options
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._ledger = ClaimLedger(redis_client, self.instance, options.lease_s)
        self._limiter = SlotLimiter(redis_client, slot_key(options.namespace, options.webhook_url),
                                    options.min_interval_s)
        # max.poll.interval.ms stays at its default: a post that outlasts it (long Retry-After)
        # makes this instance rejoin and its commit fail; the message's next reader finds our
        # claim and waits for it, so that costs a rebalance, not a second post.
        self._consumer = Consumer(consumer_config)
        self._producer = Producer(producer_config)
        self._stopping = threading.Event()
        self.stats = NotifyStats()
        self.partitions: frozenset[int] = frozenset()  # assigned now

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        try:
            self._consumer.subscribe([self._options.topic], on_assign=self._assigned,
                                     on_revoke=self._revoked)
            while not self._stopping.is_set():
                message = self._consumer.poll(0.2)
                if message is None or self._skip_error(message):
                    continue
                try:
                    self._handle(message)
                except _Interrupted:
                    break  # stopping: not committed, the next owner handles it
                try:
                    self._consumer.commit(message=message, asynchronous=False)
                except KafkaException as exc:  # e.g. revoked meanwhile: re-read, then skipped
                    log.warning("offset commit failed (the message will be skipped when "
                                "re-read): %s", exc.args[0] if exc.args else exc)
        finally:
            self._consumer.close()
            self._producer.flush(5)

    def _assigned(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.partitions = self.partitions | {tp.partition for tp in partitions}
        log.info("notify: assigned partitions %s", sorted(self.partitions))

    def _revoked(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.partitions = self.partitions - {tp.partition for tp in partitions}

    def _skip_error(self, message: Message) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() == KafkaError._PARTITION_EOF:
            return True
        if error.fatal() or not error.retriable():
            raise RuntimeError(f"consumer error: {error}")
        log.warning("consumer error (retrying): %s", error)
        return True

    def _handle(self, message: Message) -> None:
        alert = decode_alert(message.value())
        if isinstance(alert, tuple):
            self._deadletter(message, *alert)
            return
        key = claim_key(self._options.namespace, alert.alert_id, alert.state, alert.repeat)
        while True:
            if not self._await_claim(key):
                self.stats.duplicates += 1
                return
            try:
                delivery = self._post(key, slack_message(alert))
                break
            except _Interrupted:
                if self._stopping.is_set():
                    # The next instance need not wait out the lease (if Redis answers).
                    with contextlib.suppress(*REDIS_UNAVAILABLE):
                        self._ledger.release(key)
                    raise
                log.warning("alert %s: claim lost while waiting; checking again", key)
        self._record(message, key, delivery)

    def _await_claim(self, key: str) -> bool:
        """True once the claim is ours; False when the notice is done already."""
        while (found := self._redis(lambda: self._ledger.claim(key))) is Verdict.WAIT:
            if self._stopping.wait(self._options.poll_s):
                raise _Interrupted
        return found is Verdict.POST

    def _post(self, key: str, payload: dict[str, Any]) -> Delivery:
        sleep = self._sleep_holding(key)
        sleep(self._redis(self._limiter.reserve))
        # A 429 pushes the shared slot past its Retry-After: the others wait too.
        return post_json(self._options.webhook_url, payload, self._options.policy, sleep=sleep,
                         on_retry_after=lambda wait: self._redis(
                             lambda: self._limiter.reserve(wait)))

    def _sleep_holding(self, key: str) -> Callable[[float], None]:
        """A sleep that keeps our lease alive and wakes for a stop."""
        def sleep(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                if self._stopping.wait(min(left, self._options.lease_s / 4)):
                    raise _Interrupted
                if not self._redis(lambda: self._ledger.renew(key)):
                    raise _Interrupted
        return sleep

    def _record(self, message: Message, key: str, delivery: Delivery) -> None:
        log.info("alert %s: %s (HTTP %s, %d requests)", key, delivery.outcome, delivery.status,
                 delivery.requests)
        if delivery.outcome == "delivered":
            self._redis(lambda: self._ledger.finish(key, "delivered"))
            self.stats.delivered += 1
        elif delivery.outcome == "rejected":
            # Dead letter first: a crash between the two repeats it, never loses it.
            self._deadletter(message, DeadLetterReason.WEBHOOK_REJECTED,
                             f"webhook answered {delivery.detail}; check the webhook URL secret")
            self._redis(lambda: self._ledger.finish(key, "rejected"))
        else:
            self._deadletter(message, DeadLetterReason.WEBHOOK_UNAVAILABLE,
                             f"gave up after {delivery.requests} requests: {delivery.detail}")
            self._redis(lambda: self._ledger.release(key))  # a replay may try again

    def _redis(self, call: Callable[[], _T]) -> _T:
        """Run a claim or slot call until Redis answers it, backing off while it is down.

        Without Redis there is no claim, and posting without one could post twice; waiting
        leaves the message uncommitted (so nothing is lost) and posts the notice once when
        Redis is back. Every call here is safe to repeat (SET NX, compare-and-act scripts,
        plain SETs). Gives up (``_Interrupted``) only when stopping.
        """

        def retrying(exc: Exception, first: bool) -> None:
            if first:  # once per outage, not once per retry
                log.warning("notify: Redis unavailable (%s); retrying with backoff",
                            type(exc).__name__)
            self.stats.redis_retries += 1

        try:
            return until_redis_answers(call, self._stopping, retrying)
        except REDIS_UNAVAILABLE as exc:  # only raised once stopping
            raise _Interrupted from exc

    def _deadletter(self, message: Message, reason: DeadLetterReason, detail: str) -> None:
        record = DeadLetterRecord(
            reason=reason, detail=detail, source_topic=message.topic() or self._options.topic,
            source_partition=message.partition() or 0, source_offset=message.offset() or 0,
            original_b64=base64.b64encode(message.value() or b"").decode(),
        )
        errors: list[KafkaError] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                errors.append(error)

        self._producer.produce(self._options.deadletter_topic, record.model_dump_json().encode(),
                               on_delivery=delivered)
        if self._producer.flush(30) or errors:
            raise RuntimeError(f"dead letter not written ({reason}): {errors[:1]}")
        log.warning("dead letter %s: %s", reason.value, detail)
        self.stats.deadlettered += 1
