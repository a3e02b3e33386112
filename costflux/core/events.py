"""Decode Kafka messages into usage events or GPU samples, or dead-letter verdicts.

A message holds one event (a JSON object) or many (a JSON array of objects); each element is
judged on its own, so one bad event in a batch costs only itself.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, NotRequired, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from costflux.schemas._types import MAX_TOKENS_PER_REQUEST
from costflux.schemas.deadletter import DeadLetterReason, DeadLetterRecord
from costflux.schemas.gpu import GpuSample
from costflux.schemas.usage import INPUT_PARTS, OUTPUT_PARTS, UsageEvent, parts_within_totals

__all__ = [
    "DEADLETTER_RECORD_MAX_BYTES", "Rejected", "deadletter_record", "decode_gpu_message",
    "decode_usage_fields", "decode_usage_message",
]

Event = TypeVar("Event", bound=BaseModel)
_TOKEN_FIELDS = frozenset({"input_tokens", "output_tokens", *INPUT_PARTS, *OUTPUT_PARTS})


@dataclass(frozen=True, slots=True)
class Rejected:
    """One input that will not be counted, with its reason code and a fix-oriented detail."""

    reason: DeadLetterReason
    detail: str
    batch_index: int | None
    original: bytes


#: A dead letter holds at most this much of its input, and of its detail. Without a cap a
#: rejected message near the broker's 1 MB limit made a record 4/3 its size (base64) that the
#: producer refused (MSG_SIZE_TOO_LARGE), which stopped ingest; a detail could echo a 1 MB
#: label key. The whole input stays at its source offset.
DEADLETTER_ORIGINAL_MAX_BYTES = 256 * 1024
DEADLETTER_DETAIL_MAX_CHARS = 1000
#: What a record can reach: the base64 original, a detail of 4-byte characters, the rest.
DEADLETTER_RECORD_MAX_BYTES = DEADLETTER_ORIGINAL_MAX_BYTES * 4 // 3 + 4 * 1100 + 2048


def deadletter_record(rejected: Rejected, topic: str, partition: int, offset: int) -> bytes:
    """The dead-letter record of ``rejected`` as JSON, at most DEADLETTER_RECORD_MAX_BYTES."""
    original = rejected.original
    detail = rejected.detail
    if len(detail) > DEADLETTER_DETAIL_MAX_CHARS:
        detail = detail[:DEADLETTER_DETAIL_MAX_CHARS] + "…"
    if len(original) > DEADLETTER_ORIGINAL_MAX_BYTES:
        detail += (f" (original truncated to its first {DEADLETTER_ORIGINAL_MAX_BYTES} of "
                   f"{len(original)} bytes; the whole message is at its source offset)")
        original = original[:DEADLETTER_ORIGINAL_MAX_BYTES]
    record = DeadLetterRecord(
        reason=rejected.reason,
        # A detail may quote a field name holding a lone surrogate: keep it as an escape.
        detail=detail.encode("utf-8", "backslashreplace").decode("utf-8"),
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        batch_index=rejected.batch_index,
        original_b64=base64.b64encode(original).decode(),
    )
    return record.model_dump_json().encode()


class _Decoder(Generic[Event]):
    """Decodes messages holding one event of a schema, or a JSON array of them."""

    def __init__(self, schema: type[Event]) -> None:
        self.schema = schema
        self._one: TypeAdapter[Event] = TypeAdapter(schema)
        self._batch: TypeAdapter[list[Event]] = TypeAdapter(list[schema])  # type: ignore[valid-type]

    def __call__(self, value: bytes | None) -> tuple[list[Event | Rejected], bool]:
        """Return one entry per event in the message, in order, and whether it was a batch."""
        if not value:
            return [Rejected(DeadLetterReason.BAD_JSON, "empty message", None, b"")], False
        # The common cases, validated straight from bytes by pydantic-core; anything it
        # refuses goes the slow way below, element by element, which names each reason.
        fast = _validate_json(value, self._one, self._batch)
        if fast is not None:
            events, batched = fast
            return list(events), batched
        lenient = False
        try:
            document = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            document = _parse_with_non_finite(value)
            if document is None:
                return [_undecodable(value, exc)], False
            lenient = True  # only a leniently parsed document can hold NaN/Infinity
        if isinstance(document, list):
            if not document:
                empty = Rejected(DeadLetterReason.NOT_AN_OBJECT, "empty batch []", None, value)
                return [empty], True
            return [
                self._validate(item, index, value, lenient) for index, item in enumerate(document)
            ], True
        return [self._validate(document, None, value, lenient)], False

    def validate_item(self, item: Any) -> Event | Rejected:
        """Judge one event already parsed from JSON (by a receiver that reads another
        encoding), with the verdicts a message would get; a rejection's original is empty."""
        return self._validate(item, None, b"", lenient=False)

    def _validate(
        self, item: Any, index: int | None, message: bytes, lenient: bool
    ) -> Event | Rejected:
        """Judge one event: the whole message (``index`` None) or element ``index`` of it."""
        non_finite = _non_finite_field(item) if lenient else None
        if non_finite is not None:
            field, token = non_finite
            return Rejected(
                DeadLetterReason.NOT_FINITE,
                f"{field}: {token} is not a number JSON allows; "
                "send finite values or omit the field",
                index,
                _original(item, index, message),
            )
        if not isinstance(item, dict):
            return Rejected(
                DeadLetterReason.NOT_AN_OBJECT,
                f"expected a JSON object (or an array of objects), got {type(item).__name__}",
                index,
                _original(item, index, message),
            )
        try:
            return self.schema.model_validate(item)
        except ValidationError as exc:
            reason, detail = classify_validation_error(exc)
            return Rejected(reason, detail, index, _original(item, index, message))


class _FieldsDecoder(Generic[Event]):
    """The hot path's decoder: ``decoder``'s verdicts, each valid event as a dict of its fields.

    pydantic-core validating into a dict costs less than building a model instance (about 1.8
    against 2.3 µs an event on this machine), and ingest validates every event. The dict's
    type is derived from the model's fields, so the two cannot drift; an optional field the
    event leaves out is absent from its dict (read it with ``.get`` and the model's default).
    A message the fast path refuses, or one whose event breaks a rule across fields (the
    model's own validator, ``fields_ok``), takes the model's path: the verdicts are the
    model's.
    """

    def __init__(
        self, decoder: _Decoder[Event], fields_ok: Callable[[Mapping[str, Any]], bool]
    ) -> None:
        fields = _fields_of(decoder.schema)
        self._one: TypeAdapter[dict[str, Any]] = TypeAdapter(fields)
        self._batch: TypeAdapter[list[dict[str, Any]]] = TypeAdapter(list[fields])  # type: ignore[valid-type]
        self._decoder = decoder
        self._fields_ok = fields_ok

    def __call__(self, value: bytes | None) -> tuple[list[dict[str, Any] | Rejected], bool]:
        """Return one entry per event in the message, in order, and whether it was a batch."""
        fast = _validate_json(value, self._one, self._batch) if value else None
        if fast is not None and all(map(self._fields_ok, fast[0])):
            return fast
        events, batched = self._decoder(value)
        return [e if isinstance(e, Rejected) else dict(e) for e in events], batched


def _validate_json(
    value: bytes, one: TypeAdapter[Any], batch: TypeAdapter[list[Any]]
) -> tuple[list[Any], bool] | None:
    """One event ({...}) or a non-empty batch ([...]) validated straight from the bytes by
    pydantic-core, and whether it was a batch; None for anything it refuses."""
    try:
        if value[:1] == b"{":
            return [one.validate_json(value)], False
        if value[:1] == b"[":
            events = batch.validate_json(value)
            return (events, True) if events else None
    except ValidationError:
        pass
    return None


def _fields_of(model: type[BaseModel]) -> Any:
    """A TypedDict of the model's fields, with their types, constraints and the model's config
    (unknown fields, NaN); fields with a default are not required."""
    annotations: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        if info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        annotations[name] = annotation if info.is_required() else NotRequired[annotation]
    config = model.model_config
    return with_config(ConfigDict(
        extra=config.get("extra"), allow_inf_nan=config.get("allow_inf_nan", True)
    ))(TypedDict(f"{model.__name__}Fields", annotations))  # type: ignore[operator]


#: Usage messages (``llm.usage.v1``) and GPU sample messages (``gpu.samples.v1``).
decode_usage_message = _Decoder(UsageEvent)
decode_gpu_message = _Decoder(GpuSample)
#: Usage messages as dicts of fields, for the hot path (``costflux.core.ingest.judge``).
decode_usage_fields = _FieldsDecoder(decode_usage_message, parts_within_totals)


def _parse_with_non_finite(value: bytes) -> Any | None:
    """Parse JSON that is valid but for NaN/Infinity (Python's json.dumps writes them).

    orjson follows RFC 8259 and refuses the whole message; reading it leniently lets each
    element of a batch be judged on its own, and the offending ones be named not_finite.
    """
    try:
        # Decoded strictly first: json.loads(bytes) would guess UTF-16/32 and accept a BOM and
        # UTF-8-encoded surrogates ('surrogatepass'), so bytes orjson refuses as invalid UTF-8
        # were counted; the contract is UTF-8 JSON, NaN/Infinity being the only leniency.
        return json.loads(value.decode("utf-8"), parse_constant=_NonFiniteNumber)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _original(item: Any, index: int | None, message: bytes) -> bytes:
    """The input a rejected event came from: the message, or its element re-encoded.

    An element orjson cannot write (a lone surrogate escape such as "\\ud800", nesting
    deeper than 255) used to raise out of the decoder, and the whole batch was dead-lettered
    as one; its dead letter keeps the whole message instead (batch_index says which).
    """
    if index is None:
        return message
    try:
        return orjson.dumps(item)
    except TypeError:
        return message


def _undecodable(value: bytes, exc: Exception) -> Rejected:
    return Rejected(DeadLetterReason.BAD_JSON, f"not valid JSON: {exc}", None, value)


class _NonFiniteNumber(str):
    """Stands for a NaN/Infinity token found while parsing leniently."""

    __slots__ = ()


def _non_finite_field(item: Any) -> tuple[str, str] | None:
    """(path, token) of the first NaN/Infinity in ``item``.

    Also a number past a double's range (1e400), which json.loads reads as inf: as a token
    count it was named absurd_value, or wrong_type when negative. Walked with a stack, not
    recursion: a document nested as deep as json.loads allows must not overflow here.
    """
    stack: list[tuple[str, Any]] = [("", item)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, _NonFiniteNumber):
            return path or "value", str(node)
        if isinstance(node, float) and not math.isfinite(node):
            return path or "value", f"{node} (a number past a double's range)"
        if isinstance(node, dict):
            children = [(f"{path}.{k}" if path else str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))  # the first child is looked at first
    return None


def classify_validation_error(exc: ValidationError) -> tuple[DeadLetterReason, str]:
    """Map the first pydantic error to a reason code and a detail naming the field."""
    errors = exc.errors(include_url=False, include_input=True)
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
    value = error.get("input")
    if field in _TOKEN_FIELDS and isinstance(value, float) and value > MAX_TOKENS_PER_REQUEST:
        # orjson reads integers past 64 bits as floats: still an absurd count, not a type
        return DeadLetterReason.ABSURD_VALUE, f"{where}: more than {MAX_TOKENS_PER_REQUEST}"
    if field in _TOKEN_FIELDS and isinstance(value, float) and value < -MAX_TOKENS_PER_REQUEST:
        # Likewise below -2**63: it was named wrong_type, "token counts are JSON integers".
        return DeadLetterReason.NEGATIVE_VALUE, f"{where}: a token count cannot be negative"
    if field == "service_tier" and kind == "literal_error":
        return DeadLetterReason.INVALID_VALUE, detail
    if kind.endswith(("_type", "_parsing")) or kind == "literal_error":
        if field in _TOKEN_FIELDS | {"gpu_seconds", "latency_ms"} and kind == "int_type":
            return DeadLetterReason.WRONG_TYPE, detail + " (token counts are JSON integers)"
        return DeadLetterReason.WRONG_TYPE, detail
    return DeadLetterReason.INVALID_VALUE, detail
