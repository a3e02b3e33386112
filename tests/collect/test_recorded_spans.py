"""The mapping on spans the real OpenTelemetry instrumentation for the OpenAI client emitted
(tests/fixtures/otel_genai, recorded against a local fake OpenAI server): every encoding the
collector reads gives the same usage events, whose tokens are what the server answered."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from costflux.core.collect import judge_spans
from costflux.core.genai_spans import GenAISpan, SpanMapping
from costflux.streams.otlp import read_json, read_protobuf, span_document

FIXTURES = Path(__file__).parents[1] / "fixtures" / "otel_genai"
RECORDED = json.loads((FIXTURES / "expected.json").read_text())


def decoded() -> dict[str, list[GenAISpan]]:
    return {
        "protobuf": read_protobuf((FIXTURES / "traces.pb").read_bytes()),
        "protobuf, gzip": read_protobuf(gzip.decompress((FIXTURES / "traces.pb.gz").read_bytes())),
        "json": read_json((FIXTURES / "traces.json").read_bytes()),
    }


def events_of(spans: list[GenAISpan], mapping: SpanMapping) -> list[dict[str, Any]]:
    judged = judge_spans(spans, mapping, lambda span: span_document(span, ()))
    assert judged.rejected == []
    return [json.loads(event) for event in judged.events]


def test_every_encoding_reads_the_same_spans() -> None:
    encodings = decoded()
    assert encodings["protobuf"] == encodings["protobuf, gzip"] == encodings["json"]
    assert len(encodings["json"]) == len(RECORDED["genai_spans"]) + len(
        RECORDED["non_genai_spans"])


@pytest.mark.parametrize("encoding", ["protobuf", "protobuf, gzip", "json"])
def test_each_call_that_reported_usage_is_one_event_with_the_answered_tokens(
    encoding: str,
) -> None:
    spans = decoded()[encoding]
    events = events_of(spans, SpanMapping())
    answers = RECORDED["fake_server_answers"]
    # What the fake server answered with usage: the non-streamed chat, the streamed chat that
    # asked for usage, and the embeddings call (a stream without usage reports none, and the
    # failed call none: neither is an event).
    by_response_id = {span["span_id"]: span["gen_ai"].get("gen_ai.response.id")
                      for span in RECORDED["genai_spans"]}
    expected = []
    for span in RECORDED["genai_spans"]:
        response_id = span["gen_ai"].get("gen_ai.response.id")
        answer = answers.get(response_id) if response_id else None
        if span["gen_ai"].get("gen_ai.operation.name") == "embeddings":
            answer = answers["embeddings"]
        if answer is None or not answer.get("usage_sent", True):
            continue
        expected.append({
            "event_id": f"otel:{span['trace_id']}:{span['span_id']}",
            "model": answer["model"],
            "input_tokens": answer["usage"]["prompt_tokens"],
            "output_tokens": answer["usage"].get("completion_tokens", 0),
        })
    assert len(expected) == 3, by_response_id
    assert [{k: e[k] for k in ("event_id", "model", "input_tokens", "output_tokens")}
            for e in events] == expected
    # The instrumentation records no cached tokens for chat completions (README, "Collector"):
    # the events carry none, rather than a guess.
    assert all("cached_input_tokens" not in e for e in events)
    assert {e["labels"]["app"] for e in events} == {"chat-api"}
    assert {e["labels"]["namespace"] for e in events} == {"ml-prod"}
    assert {e["labels"]["team"] for e in events} == {"search"}
    assert {e["status"] for e in events} == {"ok"}


def test_the_requested_model_is_priced_when_the_served_version_is_not() -> None:
    spans = decoded()["json"]
    known = {"gpt-4o-mini", "gpt-4o", "text-embedding-3-small"}
    events = events_of(spans, SpanMapping(priced=lambda model, _ts: model in known))
    assert [e["model"] for e in events] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


def test_event_time_is_the_span_end_to_the_millisecond() -> None:
    spans = {span.span_id: span for span in decoded()["protobuf"]}
    for event in events_of(list(spans.values()), SpanMapping()):
        span = spans[event["event_id"].rsplit(":", 1)[1]]
        end_ms = span.end_time_unix_nano // 1_000_000
        seconds, millis = divmod(end_ms, 1000)
        assert event["ts"].endswith(f"{seconds % 60:02d}.{millis:03d}Z")


def test_ignored_spans_are_counted_by_reason() -> None:
    judged = judge_spans(decoded()["json"], SpanMapping(), lambda span: b"")
    # The stream without usage, the failed call and the two non-GenAI spans.
    assert dict(judged.ignored) == {"no_usage": 4}
    assert judged.received == len(decoded()["json"])
