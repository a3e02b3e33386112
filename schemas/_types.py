"""Field types shared by the wire contracts."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, Strict, WithJsonSchema

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

#: Largest token count one request may report; more is a producer bug, not a bill.
MAX_TOKENS_PER_REQUEST = 10_000_000
MAX_LABELS = 32
MAX_LABEL_KEY_LENGTH = 128
MAX_LABEL_VALUE_LENGTH = 256
MAX_ID_LENGTH = 256


def parse_event_time(value: Any) -> datetime:
    """Accept RFC 3339 with an offset or ``Z``, or epoch seconds; return an aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError("ts must be an RFC 3339 string or epoch seconds, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("ts must be finite")
        try:
            return _EPOCH + timedelta(seconds=value)
        except OverflowError:
            raise ValueError(
                "ts is out of range; epoch time is in seconds (not milliseconds)"
            ) from None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("ts is not RFC 3339 (e.g. 2024-05-01T12:00:00Z)") from None
    else:
        raise ValueError("ts must be an RFC 3339 string or epoch seconds")
    if parsed.tzinfo is None:
        raise ValueError("ts needs a UTC offset or Z: a time without one is ambiguous")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("ts is out of range") from None


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, computed without float rounding."""
    return (moment - _EPOCH) // _ONE_MS


EventTime = Annotated[
    datetime,
    BeforeValidator(parse_event_time),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "description": "epoch seconds"},
            ],
            "description": "event time: RFC 3339 with offset or Z, or epoch seconds (UTC)",
        }
    ),
]

TokenCount = Annotated[int, Strict(), Field(ge=0, le=MAX_TOKENS_PER_REQUEST)]
Identifier = Annotated[str, Strict(), Field(min_length=1, max_length=MAX_ID_LENGTH)]
LabelValue = Annotated[str, Strict(), Field(max_length=MAX_LABEL_VALUE_LENGTH)]
LabelKey = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_KEY_LENGTH)]
Labels = Annotated[
    dict[LabelKey, LabelValue],
    Field(max_length=MAX_LABELS, description="Kubernetes-style labels: team, project, app, …"),
]
