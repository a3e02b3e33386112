"""CloudEvents 1.0 carrying usage to usage events. Pure.

A usage CloudEvent has the type ``io.costflux.usage.v1`` (configurable) and, as ``data``, the
usage contract's fields without ``event_id`` and ``ts``: those are the CloudEvent's own
``source`` + ``id`` (which the spec makes unique per event, and which identify a resent
event) and ``time``. ``subject`` fills one label, ``team`` by default, unless ``data`` sets it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

from costflux.core.events import Rejected
from costflux.schemas._types import MAX_ID_LENGTH
from costflux.schemas.deadletter import DeadLetterReason

__all__ = ["USAGE_EVENT_TYPE", "usage_from_cloudevent"]

USAGE_EVENT_TYPE: Final = "io.costflux.usage.v1"
_REQUIRED = ("specversion", "id", "source", "type")
_JSON_TYPES = ("application/json", "text/json")


def usage_from_cloudevent(
    attributes: Mapping[str, Any], data: Any, *, event_type: str = USAGE_EVENT_TYPE,
    subject_label: str = "team",
) -> dict[str, Any] | Rejected:
    """The usage event (not yet validated) that a CloudEvent carries, or why it carries none.

    >>> usage_from_cloudevent({"specversion": "1.0", "id": "42", "source": "/billing",
    ...     "type": "io.costflux.usage.v1", "time": "2024-05-01T12:00:00Z", "subject": "search"},
    ...     {"model": "gpt-4o", "input_tokens": 10, "output_tokens": 2})["labels"]
    {'team': 'search'}
    """
    for name in _REQUIRED:
        if not isinstance(attributes.get(name), str) or not attributes[name]:
            return _problem(DeadLetterReason.MISSING_FIELD,
                            f"CloudEvent attribute {name!r} is required (a non-empty string)")
    if attributes["specversion"] != "1.0":
        return _problem(DeadLetterReason.INVALID_VALUE,
                        f"specversion {attributes['specversion']!r}: only CloudEvents 1.0 is read")
    if attributes["type"] != event_type:
        return _problem(DeadLetterReason.INVALID_VALUE,
                        f"type {attributes['type']!r} is not a usage event; send type "
                        f"{event_type!r}")
    content_type = attributes.get("datacontenttype")
    if content_type and not str(content_type).split(";")[0].strip().lower().endswith(
            (*_JSON_TYPES, "+json")):
        return _problem(DeadLetterReason.INVALID_VALUE,
                        f"datacontenttype {content_type!r}: usage data must be JSON")
    if not isinstance(data, dict):
        return _problem(DeadLetterReason.NOT_AN_OBJECT,
                        "data must be a JSON object of usage fields (model, input_tokens, …)")
    for name in ("event_id", "ts"):
        if name in data:
            return _problem(DeadLetterReason.UNKNOWN_FIELD,
                            f"data.{name}: leave it out; it comes from the CloudEvent's "
                            f"{'source and id' if name == 'event_id' else 'time'}")
    if not attributes.get("time"):
        return _problem(DeadLetterReason.MISSING_FIELD,
                        "CloudEvent attribute 'time' is required: it is the usage's event time")
    event = dict(data)
    event["event_id"] = _event_id(attributes["source"], attributes["id"])
    event["ts"] = attributes["time"]
    subject = attributes.get("subject")
    labels = event.get("labels")
    if subject and (labels is None or isinstance(labels, dict)):
        event["labels"] = {subject_label: subject, **(labels or {})}
    return event


def _event_id(source: str, event_id: str) -> str:
    """``ce:<source>:<id>``; hashed when longer than the contract allows."""
    whole = f"ce:{source}:{event_id}"
    if len(whole) <= MAX_ID_LENGTH:
        return whole
    return "ce:sha256:" + hashlib.sha256(f"{source}\0{event_id}".encode()).hexdigest()


def _problem(reason: DeadLetterReason, detail: str) -> Rejected:
    return Rejected(reason, detail, None, b"")
