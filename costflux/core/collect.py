"""What one collector request holds: usage events to send, items rejected, items ignored. Pure.

Every converted event is validated here against the usage contract, so a bad item is refused
to its sender, with the dead-letter topic's reason codes, before anything is acknowledged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, TypeVar

import orjson

from costflux.core.cloudevents_usage import usage_from_cloudevent
from costflux.core.events import Rejected, decode_usage_message
from costflux.core.genai_spans import (
    GenAISpan,
    Ignored,
    SpanMapping,
    labels_of,
    usage_from_span,
)
from costflux.schemas.usage import UsageEvent

__all__ = ["CloudEventInput", "Judged", "batch_messages", "judge_cloudevents", "judge_spans"]

#: One Kafka message holds the events of a request up to this size (a JSON array, which the
#: worker reads as a batch); well under Kafka's default 1 MB message limit.
MESSAGE_MAX_BYTES: Final = 256 * 1024

Item = TypeVar("Item")


@dataclass(slots=True)
class Judged:
    """The verdicts on one request's items, in the order they came."""

    events: list[bytes] = field(default_factory=list)  # valid usage events, JSON
    event_ids: list[str] = field(default_factory=list)
    rejected: list[tuple[int, Rejected]] = field(default_factory=list)  # (item index, why)
    ignored: Counter[str] = field(default_factory=Counter)  # reason -> items

    @property
    def received(self) -> int:
        return len(self.events) + len(self.rejected) + sum(self.ignored.values())


@dataclass(frozen=True, slots=True)
class CloudEventInput:
    """One CloudEvent as received: its context attributes and its decoded data."""

    attributes: dict[str, Any]
    data: Any
    original: bytes  # the event as sent, for its dead letter


def judge_spans(spans: Iterable[GenAISpan], mapping: SpanMapping,
                original: Callable[[GenAISpan], bytes]) -> Judged:
    """Convert and validate every span; ``original`` renders one for its dead letter."""
    judged = Judged()
    # A resource's labels, worked out once for all its spans (the resource is kept in the
    # value, so that its id cannot be reused by another while this runs).
    by_resource: dict[int, tuple[Mapping[str, Any], dict[str, str]]] = {}
    for index, span in enumerate(spans):
        known = by_resource.get(id(span.resource))
        if known is None or known[0] is not span.resource:
            known = by_resource[id(span.resource)] = (
                span.resource, labels_of(span.resource, mapping.labels))
        converted = usage_from_span(span, mapping, known[1])
        if isinstance(converted, Ignored):
            judged.ignored[converted.reason] += 1
        else:
            _add(judged, index, converted, partial(original, span))
    return judged


def judge_cloudevents(events: Iterable[CloudEventInput], *, event_type: str,
                      subject_label: str) -> Judged:
    """Convert and validate every CloudEvent."""
    judged = Judged()
    for index, event in enumerate(events):
        converted = usage_from_cloudevent(event.attributes, event.data, event_type=event_type,
                                          subject_label=subject_label)
        _add(judged, index, converted, partial(bytes, event.original))
    return judged


def batch_messages(events: list[bytes], max_bytes: int = MESSAGE_MAX_BYTES) -> list[bytes]:
    """The events as JSON-array messages of at most ``max_bytes`` (an event larger than that
    travels alone).

    >>> batch_messages([b'{"a":1}', b'{"b":2}', b'{"c":3}'], max_bytes=17)
    [b'[{"a":1},{"b":2}]', b'[{"c":3}]']
    """
    messages: list[bytes] = []
    batch: list[bytes] = []
    size = 2
    for event in events:
        if batch and size + 1 + len(event) > max_bytes:  # a comma and the event
            messages.append(b"[" + b",".join(batch) + b"]")
            batch, size = [], 2
        size += len(event) + (1 if batch else 0)
        batch.append(event)
    if batch:
        messages.append(b"[" + b",".join(batch) + b"]")
    return messages


def _add(judged: Judged, index: int, converted: dict[str, Any] | Rejected,
         original: Callable[[], bytes]) -> None:
    verdict = (converted if isinstance(converted, Rejected)
               else decode_usage_message.validate_item(converted))
    if isinstance(verdict, UsageEvent):
        assert not isinstance(converted, Rejected)
        judged.events.append(orjson.dumps(converted))
        judged.event_ids.append(verdict.event_id)
    else:
        judged.rejected.append(
            (index, Rejected(verdict.reason, verdict.detail, index, original())))
