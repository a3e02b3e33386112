"""Decode Kafka message values into usage events, or into dead-letter verdicts with a reason.

A message holds one event (a JSON object) or many (a JSON array of objects); each element is
judged on its own, so one bad event in a batch costs only itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.deadletter import DeadLetterReason
from schemas.usage import UsageEvent

__all__ = ["Rejected", "decode_usage_message"]

_TOKEN_FIELDS = frozenset({"input_tokens", "output_tokens", "cached_input_tokens"})


@dataclass(frozen=True, slots=True)
class Rejected:
    """One input that will not be counted, with its reason code and a fix-oriented detail."""

    reason: DeadLetterReason
    detail: str
    batch_index: int | None
    original: bytes


def decode_usage_message(value: bytes | None) -> tuple[list[UsageEvent | Rejected], bool]:
    """Return one entry per event in the message, in order, and whether it was a batch."""
    if not value:
        return [Rejected(DeadLetterReason.BAD_JSON, "empty message", None, value or b"")], False
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [_undecodable(value, exc)], False
    if isinstance(document, list):
        if not document:
            return [Rejected(DeadLetterReason.NOT_AN_OBJECT, "empty batch []", None, value)], True
        return [_validate(item, index, None) for index, item in enumerate(document)], True
    return [_validate(document, None, value)], False


def _undecodable(value: bytes, exc: Exception) -> Rejected:
    # orjson follows RFC 8259 and refuses NaN/Infinity; Python's json.dumps writes them by
    # default, so tell that producer bug apart from garbage.
    try:
        json.loads(value, parse_constant=_raise_non_finite)
    except _NonFinite as non_finite:
        return Rejected(DeadLetterReason.NOT_FINITE, str(non_finite), None, value)
    except (ValueError, UnicodeDecodeError):
        pass
    return Rejected(DeadLetterReason.BAD_JSON, f"not valid JSON: {exc}", None, value)


class _NonFinite(ValueError):
    """A JSON document held NaN or Infinity."""


def _raise_non_finite(token: str) -> float:
    raise _NonFinite(f"{token} is not a number JSON allows; send finite values or omit the field")


def _validate(item: Any, index: int | None, raw: bytes | None) -> UsageEvent | Rejected:
    if not isinstance(item, dict):
        original = raw if raw is not None else orjson.dumps(item)
        return Rejected(
            DeadLetterReason.NOT_AN_OBJECT,
            f"expected a JSON object (or an array of objects), got {type(item).__name__}",
            index,
            original,
        )
    try:
        event = UsageEvent.model_validate(item)
    except ValidationError as exc:
        reason, detail = classify_validation_error(exc)
        return Rejected(reason, detail, index, raw if raw is not None else orjson.dumps(item))
    if event.cached_input_tokens > event.input_tokens:
        return Rejected(
            DeadLetterReason.INVALID_VALUE,
            "cached_input_tokens exceeds input_tokens; cached tokens are part of the input",
            index,
            raw if raw is not None else orjson.dumps(item),
        )
    return event


def classify_validation_error(exc: ValidationError) -> tuple[DeadLetterReason, str]:
    """Map the first pydantic error to a reason code and a detail naming the field."""
    errors = exc.errors(include_url=False, include_input=False)
    # An unknown field usually explains the other errors (input_token -> input_tokens missing).
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = error["loc"]
    field = str(loc[0]) if loc else "event"
    kind = error["type"]
    where = ".".join(str(p) for p in loc) or "event"
    detail = f"{where}: {error['msg']}"
    if kind == "extra_forbidden":
        return DeadLetterReason.UNKNOWN_FIELD, (
            f"{where}: unknown field (a typo such as input_token would under-bill); "
            "put free-form data in labels"
        )
    if kind == "missing":
        return DeadLetterReason.MISSING_FIELD, f"{where}: required field is missing"
    if field == "labels" and kind in ("too_long", "string_too_long", "string_too_short"):
        return DeadLetterReason.OVERSIZED_LABELS, detail
    if field == "ts":
        return DeadLetterReason.BAD_TIMESTAMP, detail
    if kind == "finite_number":
        return DeadLetterReason.NOT_FINITE, detail
    if kind in ("greater_than_equal", "greater_than"):
        return DeadLetterReason.NEGATIVE_VALUE, detail
    if kind in ("less_than_equal", "less_than"):
        return DeadLetterReason.ABSURD_VALUE, detail
    if kind.endswith(("_type", "_parsing")) or kind == "literal_error":
        if field in _TOKEN_FIELDS | {"gpu_seconds", "latency_ms"} and kind == "int_type":
            return DeadLetterReason.WRONG_TYPE, detail + " (token counts are JSON integers)"
        return DeadLetterReason.WRONG_TYPE, detail
    return DeadLetterReason.INVALID_VALUE, detail


