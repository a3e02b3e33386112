"""OpenTelemetry GenAI spans to usage events. Pure.

A span that reports token usage in the GenAI semantic conventions (``gen_ai.usage.*``) is one
inference request. Its usage event is identified by the span (a resent export batch counts
once), timed by the span's end, and labelled from span and resource attributes through a
configurable mapping. Everything else is ignored, with a reason that is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, NamedTuple

__all__ = [
    "DEFAULT_SPAN_LABELS", "INFERENCE_OPERATIONS", "READ_ATTRIBUTES", "GenAISpan", "Ignored",
    "SpanMapping", "labels_of", "parse_label_mapping", "usage_from_span",
]

#: Where each label comes from, first match winning: span attributes, then resource
#: attributes. ``team`` and ``project`` are custom attributes an application sets on its
#: resource (OTEL_RESOURCE_ATTRIBUTES=team=search,project=rag) or on its spans.
DEFAULT_SPAN_LABELS: Final = (
    ("costflux.team", "team"), ("team", "team"),
    ("costflux.project", "project"), ("project", "project"),
    ("costflux.app", "app"), ("service.name", "app"),
    ("k8s.namespace.name", "namespace"),
    ("k8s.deployment.name", "deployment"),
    ("k8s.cluster.name", "cluster"),
    ("enduser.id", "end_user"), ("user.id", "end_user"),
)

#: ``gen_ai.operation.name`` values that are one request to a model. Agent and tool spans
#: (``invoke_agent``, ``execute_tool``, …) may repeat their children's usage as a total, so
#: counting them would count those tokens twice.
INFERENCE_OPERATIONS: Final = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion", "responses"}
)

#: Current names first, then the older ones that instrumentations still send.
_INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
_OUTPUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
#: The conventions' cache-read count, then OpenLLMetry's spelling of it.
_CACHED_TOKENS = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
#: Usage fields of the other kinds of tokens, each from the conventions' attribute or
#: OpenLLMetry's spelling.
_PART_TOKENS = {
    "cache_write_input_tokens": ("gen_ai.usage.cache_creation.input_tokens",
                                 "gen_ai.usage.cache_creation_input_tokens"),
    "reasoning_tokens": ("gen_ai.usage.reasoning.output_tokens",
                         "gen_ai.usage.reasoning_tokens"),
}
_MODELS = ("gen_ai.response.model", "gen_ai.request.model")
#: Every span attribute the mapping reads besides labels (a dead letter keeps only these:
#: other attributes may hold prompts, answers or headers).
READ_ATTRIBUTES: Final = frozenset(
    {*_INPUT_TOKENS, *_OUTPUT_TOKENS, *_CACHED_TOKENS, *_MODELS, "gen_ai.operation.name",
     *(name for names in _PART_TOKENS.values() for name in names)})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class GenAISpan:
    """What the mapping reads of one span, whatever encoding it arrived in."""

    trace_id: str  # 32 lowercase hex digits
    span_id: str  # 16 lowercase hex digits
    name: str
    end_time_unix_nano: int
    attributes: Mapping[str, Any]
    resource: Mapping[str, Any]
    failed: bool  # the span's status is ERROR


class Ignored(NamedTuple):
    """A span that is not an inference request's usage, and why (a metric label)."""

    reason: str


@dataclass(frozen=True, slots=True)
class SpanMapping:
    """How spans become events: label sources in priority order, and which model is priced.

    ``priced(model, ts_ms)`` says whether the price book knows a model at a time: the served
    model (``gen_ai.response.model``, often a dated version) is taken when it is priced,
    else the requested one. Without a price book the served model is taken.
    """

    labels: Sequence[tuple[str, str]] = DEFAULT_SPAN_LABELS
    priced: Callable[[str, int], bool] | None = None


def usage_from_span(span: GenAISpan, mapping: SpanMapping,
                    resource_labels: Mapping[str, str] | None = None
                    ) -> dict[str, Any] | Ignored:
    """The usage event of ``span``, not yet validated, or why it is none.

    ``resource_labels`` are the labels of the span's resource (``labels_of(span.resource,
    mapping.labels)``), when the caller has them for all its spans.

    Values are passed through as the span has them (a negative or fractional count, a
    missing model), so that the usage contract's own validation names what is wrong with
    the same reason codes as the dead-letter topic.

    >>> span = GenAISpan("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "chat gpt-4o",
    ...     1714564800_123_000_000, {"gen_ai.operation.name": "chat",
    ...     "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
    ...     "gen_ai.usage.output_tokens": 2}, {"service.name": "chat-api"}, False)
    >>> event = usage_from_span(span, SpanMapping())
    >>> event["event_id"]
    'otel:0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331'
    >>> event["ts"], event["labels"]
    ('2024-05-01T12:00:00.123Z', {'app': 'chat-api'})
    """
    attributes = span.attributes
    input_tokens = _first(attributes, _INPUT_TOKENS)
    output_tokens = _first(attributes, _OUTPUT_TOKENS)
    if input_tokens is None and output_tokens is None:
        return Ignored("no_usage")
    operation = attributes.get("gen_ai.operation.name")
    if operation is not None and operation not in INFERENCE_OPERATIONS:
        return Ignored("not_inference")
    ts_ms = span.end_time_unix_nano // 1_000_000
    event: dict[str, Any] = {
        "event_id": f"otel:{span.trace_id}:{span.span_id}",
        "input_tokens": 0 if input_tokens is None else input_tokens,
        "output_tokens": 0 if output_tokens is None else output_tokens,
        "status": "error" if span.failed else "ok",
        "labels": {
            **(labels_of(span.resource, mapping.labels) if resource_labels is None
               else resource_labels),
            **labels_of(attributes, mapping.labels),
        },
    }
    if span.end_time_unix_nano > 0:  # 0 is "unset" in OTLP: the event then has no time
        event["ts"] = _rfc3339_ms(ts_ms)
    model = _model(attributes, ts_ms, mapping.priced)
    if model is not None:
        event["model"] = model
    cached = _first(attributes, _CACHED_TOKENS)
    if cached is not None:
        event["cached_input_tokens"] = cached
    for field, names in _PART_TOKENS.items():
        value = _first(attributes, names)
        if value is not None:
            event[field] = value
    return event


def parse_label_mapping(text: str) -> tuple[tuple[str, str], ...]:
    """``attribute=label`` pairs, comma-separated, in priority order.

    >>> parse_label_mapping("service.name=app, team=team")
    (('service.name', 'app'), ('team', 'team'))
    """
    pairs = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        attribute, sep, label = (s.strip() for s in part.partition("="))
        if not sep or not attribute or not label:
            raise ValueError(f"{part!r}: give attribute=label, e.g. service.name=app")
        pairs.append((attribute, label))
    return tuple(pairs)


def _first(attributes: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = attributes.get(name)
        if value is not None:
            return value
    return None


def _model(attributes: Mapping[str, Any], ts_ms: int,
           priced: Callable[[str, int], bool] | None) -> Any:
    candidates = [m for m in (attributes.get(name) for name in _MODELS) if m]
    if priced is not None:
        for model in candidates:
            if isinstance(model, str) and priced(model, ts_ms):
                return model
    return candidates[0] if candidates else None


def labels_of(attributes: Mapping[str, Any], sources: Sequence[tuple[str, str]]
              ) -> dict[str, str]:
    """The labels one set of attributes gives, the first source of each label winning."""
    labels: dict[str, str] = {}
    for attribute, label in sources:
        value = attributes.get(attribute)
        if label not in labels and value is not None and value != "":
            labels[label] = value if isinstance(value, str) else str(value)
    return labels


def _rfc3339_ms(ts_ms: int) -> str:
    """UTC, millisecond precision, computed from integers (a float would round)."""
    seconds, millis = divmod(ts_ms, 1000)
    return f"{_rfc3339_second(seconds)}.{millis:03d}Z"


@lru_cache(maxsize=4096)
def _rfc3339_second(seconds: int) -> str:
    # The spans of one export mostly end within a few seconds: formatted once each.
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
