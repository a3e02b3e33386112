"""LiteLLM callback: one costflux usage event per finished LiteLLM call, sent to ``llm.usage.v1``.

Every call LiteLLM completes, or fails, becomes one ``llm.usage.v1`` event, mapped from
LiteLLM's ``standard_logging_object`` by
:func:`costflux.core.litellm_usage.usage_event_from_litellm` (its docstring says which field
becomes what): tokens, cached tokens, latency, ``ok``/``error``, and the labels ``team``,
``api_key`` (the key alias, or 12 hex digits of LiteLLM's hash of the key: never the key),
``end_user``, ``project``, ``app`` and ``namespace``.

**LiteLLM proxy.** In ``config.yaml``::

    litellm_settings:
      callbacks: ["costflux.integrations.litellm.costflux_callback"]

and in the proxy's environment ``COSTFLUX_KAFKA_BOOTSTRAP=kafka:9092`` (plus, as for any
costflux process, ``COSTFLUX_TOPIC_USAGE``, ``COSTFLUX_KAFKA_SECURITY_PROTOCOL`` and
``COSTFLUX_KAFKA_SASL_*`` / ``COSTFLUX_KAFKA_SSL_*`` where the cluster needs them).
``costflux_callback`` is a module-level instance made from the environment the first time it
is looked up, which LiteLLM does when it loads the config (in each worker process, at its
start-up), so a missing bootstrap fails the config load with a message naming
``COSTFLUX_KAFKA_BOOTSTRAP``; importing this module makes nothing. To pass arguments
instead, put an instance in a file beside ``config.yaml`` (LiteLLM's usual pattern)::

    # custom_callbacks.py
    from costflux.integrations.litellm import CostfluxCallback
    costflux_handler = CostfluxCallback(bootstrap="kafka:9092", topic="llm.usage.v1")

    litellm_settings:
      callbacks: custom_callbacks.costflux_handler

On the proxy, LiteLLM fills ``team``, ``api_key``, ``end_user`` and ``project`` from the virtual
key that made the request; a request adds ``app``/``namespace`` (and ``project``) with
``"metadata": {"tags": ["app:web"]}`` or ``"metadata": {"spend_logs_metadata": {"app": "web"}}``.

**LiteLLM SDK**::

    import litellm
    from costflux.integrations.litellm import CostfluxCallback

    costflux = CostfluxCallback(bootstrap="kafka:9092")  # or COSTFLUX_KAFKA_BOOTSTRAP
    litellm.callbacks = [costflux]
    litellm.completion(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                       user="customer-42",
                       metadata={"user_api_key_team_alias": "search",
                                 "user_api_key_alias": "search-batch",
                                 "tags": ["project:assistant", "app:batch"]})
    costflux.close()  # sends what is still queued; also run at interpreter exit

The SDK has no virtual keys, so there the caller names team and key in ``metadata`` with the
proxy's field names (LiteLLM copies exactly those into the payload); ``end_user`` is
``metadata["user_api_key_end_user_id"]``, else the OpenAI ``user`` parameter.

**Never in LiteLLM's way.** The hooks only map the payload and put the event on a bounded
in-memory queue (``max_queued``); one background thread hands events to an idempotent
``costflux.streams.producer.UsageProducer`` (``enable.idempotence``, ``acks=all``), one event per
message keyed by its ``event_id``, and checks their delivery every few seconds. Nothing the
callback does raises into LiteLLM or blocks its event loop: a payload that cannot be mapped, a
full queue (Kafka unreachable for long), a produce or delivery error, an event after
:meth:`CostfluxCallback.close`, each is counted by reason in :meth:`CostfluxCallback.stats` and
logged (the first ten of each reason, then every thousandth) with event ids and reasons only:
no prompt, no key, no credential.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import litellm
from litellm.integrations.custom_logger import CustomLogger

from costflux.core.litellm_usage import LitellmPayloadError, usage_event_from_litellm
from costflux.settings import ConfigError, Settings
from costflux.streams.kafka import producer_config
from costflux.streams.producer import ProducerError, UsageProducer

__all__ = ["FAILURE_REASONS", "CallbackStats", "CostfluxCallback"]

log = logging.getLogger(__name__)

#: Why an event did not reach Kafka (the keys of ``CallbackStats.failures``).
FAILURE_REASONS: Final = (
    "no_payload",  # LiteLLM passed no standard_logging_object (it failed to build one)
    "unmapped",  # the payload could not be a valid usage event (the log says which field)
    "queue_full",  # max_queued events were already waiting: Kafka has been unreachable
    "produce",  # librdkafka refused the event
    # A delivery check (every few seconds while events flow, and flush/close) found failed or
    # undelivered messages; counts checks, not events (the log line says how many).
    "delivery",
    "closed",  # the call finished after close()
)
#: Failures of one reason logged one by one before the log thins out to every thousandth.
_LOGGED_IN_FULL: Final = 10
#: How long close() at interpreter exit waits for undelivered events.
_EXIT_TIMEOUT_S: Final = 5.0
_STOP: Final = object()


@dataclass(frozen=True)
class CallbackStats:
    """What a callback has done: events queued, events handed to Kafka, failures by reason."""

    queued: int
    sent: int
    failures: Mapping[str, int]


class _Flush:
    """A request to the sender thread: confirm the delivery of everything sent so far."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.done = threading.Event()
        self.delivered = False


class CostfluxCallback(CustomLogger):
    """A LiteLLM ``CustomLogger`` that publishes every call's usage to costflux.

    ``bootstrap`` (else ``COSTFLUX_KAFKA_BOOTSTRAP``) and ``topic`` (else
    ``COSTFLUX_TOPIC_USAGE``, default ``llm.usage.v1``) override ``settings``, which default to
    the environment's; the producer is :func:`costflux.streams.kafka.producer_config` of them.
    ``max_queued`` events may wait for the sender before further ones are dropped (and
    counted); delivery is checked every ``delivery_check_s`` while events flow, each check
    waiting up to ``delivery_timeout_s``.

    >>> import litellm
    >>> costflux = CostfluxCallback(bootstrap="127.0.0.1:9092")  # doctest: +SKIP
    >>> litellm.callbacks = [costflux]  # doctest: +SKIP
    """

    def __init__(
        self,
        bootstrap: str | None = None,
        *,
        topic: str | None = None,
        settings: Settings | None = None,
        max_queued: int = 10_000,
        delivery_check_s: float = 5.0,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        super().__init__()
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        if delivery_check_s <= 0 or delivery_timeout_s <= 0:
            raise ValueError("delivery_check_s and delivery_timeout_s must be positive")
        chosen = settings if settings is not None else Settings()
        if bootstrap is not None:
            chosen = chosen.model_copy(update={"kafka_bootstrap": bootstrap})
        if not chosen.kafka_bootstrap:
            raise ConfigError(
                "CostfluxCallback needs a Kafka bootstrap: set COSTFLUX_KAFKA_BOOTSTRAP="
                "host:port[,host:port] in LiteLLM's environment or pass bootstrap='host:port'"
            )
        # Public and plain on purpose: LiteLLM registers a CustomLogger only once per class and
        # public str/int/bool attributes (LoggingCallbackManager._get_custom_logger_key), so
        # these make callbacks to different destinations two loggers, and a second callback to
        # the same destination a duplicate LiteLLM ignores (no event published twice).
        #: Kafka bootstrap servers (read-only).
        self.bootstrap: str = chosen.kafka_bootstrap
        #: Topic the events go to (read-only).
        self.topic: str = topic or chosen.topic_usage
        # One event per message keyed by its event_id: a re-sent event lands in the partition
        # of its first copy, and librdkafka batches messages on its own (linger.ms).
        producer = UsageProducer(producer_config(chosen), self.topic, events_per_message=1)
        self._producer: UsageProducer | None = producer  # the sender's alone until close()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self._delivery_check_s = delivery_check_s
        self._delivery_timeout_s = delivery_timeout_s
        self._lock = threading.Lock()
        self._accepting = True
        self._queued = 0
        self._sent = 0
        self._failures: Counter[str] = Counter()
        self._closed_result: bool | None = None
        self._sender = threading.Thread(
            target=self._send_loop, args=(producer,), name=f"costflux-litellm-{self.topic}",
            daemon=True,
        )
        self._sender.start()
        # At exit a dead broker may delay the process by this much, not by close()'s 30 s.
        self._close_at_exit = functools.partial(self.close, _EXIT_TIMEOUT_S)
        atexit.register(self._close_at_exit)

    def stats(self) -> CallbackStats:
        """Counts so far: queued events, events handed to Kafka, failures by reason."""
        with self._lock:
            return CallbackStats(self._queued, self._sent, dict(self._failures))

    # --- LiteLLM's hooks: never raise, never block ---

    def log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._accept(kwargs)

    def log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._accept(kwargs)

    async def async_log_success_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._accept(kwargs)

    async def async_log_failure_event(
        self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        self._accept(kwargs)

    # --- owner's controls ---

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every event queued so far is delivered; True if all were.

        False when some failed or ``timeout`` passed first (counted and logged as failures).
        Events that never made the queue (see :meth:`stats`) are not waited for.
        """
        with self._lock:
            if not self._accepting:
                return False
        return self._request_flush(time.monotonic() + timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Leave LiteLLM's callback lists, deliver what is queued, stop the sender and release
        the producer; True if every queued event was delivered. Calls that still finish here
        are counted as ``closed``. Idempotent; also run at interpreter exit."""
        with self._lock:
            if self._closed_result is not None or not self._accepting:
                return bool(self._closed_result)
            self._accepting = False
        atexit.unregister(self._close_at_exit)
        # Out of LiteLLM's lists, so that a new callback to the same destination is not taken
        # for a duplicate of this one (see __init__); a LiteLLM without the call keeps it.
        with contextlib.suppress(Exception):
            litellm.logging_callback_manager.remove_callback_from_all_lists(self)
        deadline = time.monotonic() + timeout
        delivered = self._request_flush(deadline)
        with contextlib.suppress(queue.Full):  # then the join below times out, and says so
            self._queue.put(_STOP, timeout=max(deadline - time.monotonic(), 0.1))
        self._sender.join(max(deadline - time.monotonic(), 0.1))
        if self._sender.is_alive():
            # It still owns the producer; closing it under the thread would race. The daemon
            # thread ends with the process.
            self._fail("delivery", f"sender of {self.topic!r} still busy after {timeout:g} s")
            delivered = False
        else:
            producer, self._producer = self._producer, None
            if producer is not None and delivered:
                try:  # nothing is outstanding, so this returns at once
                    producer.close(max(deadline - time.monotonic(), 0.1))
                except ProducerError as exc:
                    self._fail("delivery", str(exc))
                    delivered = False
            # Else messages are still undelivered (counted above): UsageProducer.close() would
            # wait for them without a bound (librdkafka's close flushes until
            # message.timeout.ms, 5 min by default); freeing the client drops them at once.
        with self._lock:
            self._closed_result = delivered
        return delivered

    # --- internals ---

    def _accept(self, kwargs: object) -> None:
        """Map one call's payload and queue its event; every failure is counted, none raised."""
        try:
            payload = kwargs.get("standard_logging_object") if isinstance(kwargs, Mapping) else None
            if payload is None:
                self._fail("no_payload", "no standard_logging_object from LiteLLM: not counted")
                return
            try:
                event = usage_event_from_litellm(payload)
            except LitellmPayloadError as exc:
                self._fail("unmapped", f"LiteLLM payload not counted: {exc}")
                return
            with self._lock:  # so that close() cannot slip its stop in between
                if self._accepting:
                    try:
                        self._queue.put_nowait(event)
                    except queue.Full:
                        pass
                    else:
                        self._queued += 1
                        return
            if self._accepting:
                self._fail("queue_full", f"{self._queue.maxsize} events already wait for Kafka; "
                                         f"{event['event_id']} dropped")
            else:
                self._fail("closed", f"{event['event_id']} finished after close()")
        except Exception as exc:  # noqa: BLE001 - a costflux bug must never fail a LiteLLM call
            # Only the type: an exception's text could quote the payload.
            self._fail("unmapped", f"mapping a LiteLLM payload failed ({type(exc).__name__})")

    def _request_flush(self, deadline: float) -> bool:
        request = _Flush(deadline)
        try:
            self._queue.put(request, timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Full:
            self._fail("delivery", f"flush of {self.topic!r}: the queue stayed full")
            return False
        # The sender's own producer.flush ends at the deadline; a little more for it to answer.
        if not request.done.wait(max(deadline - time.monotonic(), 0.0) + 1.0):
            self._fail("delivery", f"flush of {self.topic!r} did not finish in time")
            return False
        return request.delivered

    def _send_loop(self, producer: UsageProducer) -> None:
        unchecked = 0
        last_check = time.monotonic()
        while True:
            wait = max(self._delivery_check_s - (time.monotonic() - last_check), 0.01)
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if isinstance(item, _Flush):
                item.delivered = self._check_delivery(producer, item.deadline - time.monotonic())
                item.done.set()
                unchecked, last_check = 0, time.monotonic()
                continue
            if isinstance(item, dict):
                try:
                    producer.send(item)
                    unchecked += 1
                    with self._lock:
                        self._sent += 1
                except Exception as exc:  # noqa: BLE001 - the sender must outlive any one event
                    self._fail("produce", f"{item.get('event_id')}: {exc}")
            if unchecked and time.monotonic() - last_check >= self._delivery_check_s:
                self._check_delivery(producer, self._delivery_timeout_s)
                unchecked, last_check = 0, time.monotonic()
            elif not unchecked:
                last_check = time.monotonic()

    def _check_delivery(self, producer: UsageProducer, timeout: float) -> bool:
        try:
            producer.flush(max(timeout, 0.0))
        except ProducerError as exc:
            # Names the topic, partitions, event ids and librdkafka's reason; nothing secret.
            self._fail("delivery", str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - the sender must keep running
            self._fail("delivery", f"delivery check failed ({type(exc).__name__})")
            return False
        return True

    def _fail(self, reason: str, message: str) -> None:
        with self._lock:
            self._failures[reason] += 1
            count = self._failures[reason]
        if count <= _LOGGED_IN_FULL or count % 1000 == 0:
            log.warning("costflux LiteLLM callback (%s, #%d): %s", reason, count, message)


_shared_lock = threading.Lock()


def __getattr__(name: str) -> CostfluxCallback:
    """``costflux_callback``: the instance a proxy config names, made from the environment on
    first use (so that importing this module makes no producer)."""
    if name != "costflux_callback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _shared_lock:
        instance = globals().get(name)
        if not isinstance(instance, CostfluxCallback):
            instance = CostfluxCallback()
            globals()[name] = instance
        return instance
