"""OTLP/HTTP trace export requests, protobuf or JSON, read into GenAI spans and answered.

The JSON encoding is read directly, as the OTLP specification defines it (hex trace and span
ids, lowerCamelCase keys, 64-bit integers as strings or numbers); the protobuf encoding through
the generated classes of ``opentelemetry-proto``.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from costflux.core.errors import InputError
from costflux.core.genai_spans import READ_ATTRIBUTES, GenAISpan

__all__ = ["OtlpDecodeError", "answer", "read_json", "read_protobuf", "span_document"]

_STATUS_ERROR = Status.STATUS_CODE_ERROR


class OtlpDecodeError(InputError):
    """The body is not an export request in the encoding its content type names."""


def read_protobuf(body: bytes, keys: Collection[str] | None = None) -> list[GenAISpan]:
    """The spans of a protobuf ``ExportTraceServiceRequest``; with ``keys``, only those
    attributes are read (converting every attribute value costs more than the mapping)."""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except DecodeError as exc:
        raise OtlpDecodeError(f"not a protobuf ExportTraceServiceRequest ({exc})") from None
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes_pb(resource_spans.resource.attributes, keys)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(GenAISpan(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), name=span.name,
                    end_time_unix_nano=span.end_time_unix_nano,
                    attributes=_attributes_pb(span.attributes, keys), resource=resource,
                    failed=span.status.code == _STATUS_ERROR,
                ))
    return spans


def read_json(body: bytes) -> list[GenAISpan]:
    """The spans of an ``ExportTraceServiceRequest`` in the OTLP/JSON encoding."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OtlpDecodeError(f"not valid JSON ({exc})") from None
    try:
        return list(_spans_json(document))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise OtlpDecodeError(f"not an OTLP/JSON ExportTraceServiceRequest "
                              f"({type(exc).__name__}: {exc})") from None


def span_document(span: GenAISpan, label_sources: Collection[str]) -> bytes:
    """A span as JSON, for a dead-letter record: ids in hex, and only the attributes the
    mapping reads (others may hold prompts, answers or request headers)."""
    return orjson.dumps({
        "traceId": span.trace_id, "spanId": span.span_id, "name": span.name,
        "endTimeUnixNano": str(span.end_time_unix_nano),
        "attributes": {k: v for k, v in span.attributes.items()
                       if k in READ_ATTRIBUTES or k in label_sources},
        "resource": {k: v for k, v in span.resource.items() if k in label_sources},
        "failed": span.failed,
    }, default=str)


def answer(rejected: int, message: str, *, as_json: bool) -> tuple[bytes, str]:
    """The export response body and its content type: partial success when any span was
    rejected, as the OTLP specification asks (a 200 whose body says how many and why)."""
    if as_json:
        body: dict[str, Any] = {}
        if rejected:
            body["partialSuccess"] = {"rejectedSpans": str(rejected), "errorMessage": message}
        return orjson.dumps(body), "application/json"
    response = ExportTraceServiceResponse()
    if rejected:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    return response.SerializeToString(), "application/x-protobuf"


def _spans_json(document: Mapping[str, Any]) -> Iterator[GenAISpan]:
    for resource_spans in document.get("resourceSpans") or []:
        resource = _attributes_json((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or []:
            for span in scope_spans.get("spans") or []:
                status = span.get("status") or {}
                yield GenAISpan(
                    trace_id=_hex_id(span.get("traceId"), 16),
                    span_id=_hex_id(span.get("spanId"), 8),
                    name=str(span.get("name", "")),
                    end_time_unix_nano=int(span.get("endTimeUnixNano") or 0),
                    attributes=_attributes_json(span.get("attributes")),
                    resource=resource,
                    failed=status.get("code") in (_STATUS_ERROR, "STATUS_CODE_ERROR"),
                )


def _hex_id(value: Any, size: int) -> str:
    """A trace or span id: hex as the specification says; base64, which protobuf's own JSON
    mapping writes, is accepted too."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"a {size}-byte id is missing")
    if len(value) == size * 2:
        return bytes.fromhex(value).hex()
    decoded = base64.b64decode(value, validate=True)
    if len(decoded) != size:
        raise ValueError(f"id {value!r} is not {size} bytes")
    return decoded.hex()


def _attributes_json(attributes: Any) -> dict[str, Any]:
    return {kv["key"]: _value_json(kv.get("value") or {}) for kv in attributes or []}


def _value_json(value: Mapping[str, Any]) -> Any:
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])  # a string in the JSON encoding (64-bit)
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [_value_json(v) for v in (value["arrayValue"].get("values") or [])]
    if "kvlistValue" in value:
        return _attributes_json(value["kvlistValue"].get("values"))
    if "bytesValue" in value:
        return value["bytesValue"]
    return None


def _attributes_pb(attributes: Any, keys: Collection[str] | None = None) -> dict[str, Any]:
    if keys is None:
        return {kv.key: _value_pb(kv.value) for kv in attributes}
    return {kv.key: _value_pb(kv.value) for kv in attributes if kv.key in keys}


def _value_pb(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value_pb(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes_pb(value.kvlist_value.values, None)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, kind)


