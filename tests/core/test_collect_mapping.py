"""Spans and CloudEvents to usage events, judged with the dead-letter topic's reason codes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from costflux.core.collect import CloudEventInput, batch_messages, judge_cloudevents, judge_spans
from costflux.core.genai_spans import (
    GenAISpan,
    Ignored,
    SpanMapping,
    parse_label_mapping,
    usage_from_span,
)
from costflux.schemas.deadletter import DeadLetterReason

END_NS = 1_714_564_800_250_999_999  # 2024-05-01T12:00:00.250999999Z


def span(attributes: dict[str, Any], resource: dict[str, Any] | None = None, *,
         end_ns: int = END_NS, failed: bool = False) -> GenAISpan:
    return GenAISpan("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "chat", end_ns,
                     attributes, resource or {}, failed)


USAGE = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4",
         "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 20}


def judged_span(attributes: dict[str, Any], **kw: Any) -> Any:
    judged = judge_spans([span(attributes, **kw)], SpanMapping(), lambda s: b"span")
    return judged


def test_a_chat_span_is_one_event_timed_by_its_end_truncated_to_the_millisecond() -> None:
    event = usage_from_span(span(USAGE), SpanMapping())
    assert event == {
        "event_id": "otel:0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331",
        "ts": "2024-05-01T12:00:00.250Z", "model": "gpt-4", "input_tokens": 100,
        "output_tokens": 20, "status": "ok", "labels": {},
    }


def test_older_token_names_and_openllmetry_cache_reads_are_read() -> None:
    event = usage_from_span(span({
        "gen_ai.request.model": "gpt-4", "gen_ai.usage.prompt_tokens": 7,
        "gen_ai.usage.completion_tokens": 3, "gen_ai.usage.cache_read_input_tokens": 5,
    }), SpanMapping())
    assert not isinstance(event, Ignored)
    assert (event["input_tokens"], event["output_tokens"], event["cached_input_tokens"]) == (
        7, 3, 5)


@pytest.mark.parametrize(("attributes", "reason"), [
    ({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4"}, "no_usage"),
    ({**USAGE, "gen_ai.operation.name": "invoke_agent"}, "not_inference"),
    ({**USAGE, "gen_ai.operation.name": "execute_tool"}, "not_inference"),
    ({"http.method": "GET"}, "no_usage"),
])
def test_spans_that_are_not_a_model_call_with_usage_are_ignored(
    attributes: dict[str, Any], reason: str
) -> None:
    assert usage_from_span(span(attributes), SpanMapping()) == Ignored(reason)


@pytest.mark.parametrize(("change", "reason"), [
    ({"gen_ai.request.model": None}, DeadLetterReason.MISSING_FIELD),
    ({"gen_ai.usage.input_tokens": -5}, DeadLetterReason.NEGATIVE_VALUE),
    ({"gen_ai.usage.output_tokens": 2.5}, DeadLetterReason.WRONG_TYPE),
    ({"gen_ai.usage.input_tokens": 10**12}, DeadLetterReason.ABSURD_VALUE),
    ({"gen_ai.usage.cache_read.input_tokens": 101}, DeadLetterReason.INVALID_VALUE),
])
def test_bad_usage_is_rejected_with_the_dead_letter_reason(
    change: dict[str, Any], reason: DeadLetterReason
) -> None:
    attributes = {k: v for k, v in {**USAGE, **change}.items() if v is not None}
    judged = judged_span(attributes)
    assert judged.events == []
    [(index, rejected)] = judged.rejected
    assert (index, rejected.reason, rejected.original) == (0, reason, b"span")


def test_a_span_without_an_end_time_is_rejected() -> None:
    [(_, rejected)] = judged_span(USAGE, end_ns=0).rejected
    assert rejected.reason is DeadLetterReason.MISSING_FIELD
    assert "ts" in rejected.detail


def test_a_failed_span_with_usage_is_an_error_request() -> None:
    [event] = judged_span(USAGE, failed=True).events
    assert orjson.loads(event)["status"] == "error"


def test_labels_come_from_span_attributes_before_resource_attributes() -> None:
    event = usage_from_span(span(
        {**USAGE, "team": "ads", "user.id": 42},
        {"team": "search", "service.name": "chat-api", "costflux.project": "rag",
         "k8s.namespace.name": "ml-prod", "k8s.cluster.name": ""}), SpanMapping())
    assert not isinstance(event, Ignored)
    assert event["labels"] == {"team": "ads", "end_user": "42", "project": "rag",
                               "app": "chat-api", "namespace": "ml-prod"}


def test_a_custom_label_mapping() -> None:
    mapping = SpanMapping(labels=parse_label_mapping("deployment.environment=env, team=team"))
    event = usage_from_span(span(USAGE, {"deployment.environment": "prod"}), mapping)
    assert not isinstance(event, Ignored)
    assert event["labels"] == {"env": "prod"}
    with pytest.raises(ValueError, match="attribute=label"):
        parse_label_mapping("service.name")


def test_the_served_model_is_taken_unless_only_the_requested_one_is_priced() -> None:
    attributes = {**USAGE, "gen_ai.response.model": "gpt-4-0613"}
    unpriced = usage_from_span(span(attributes), SpanMapping())
    priced = usage_from_span(span(attributes), SpanMapping(priced=lambda m, _ts: m == "gpt-4"))
    both = usage_from_span(span(attributes), SpanMapping(priced=lambda m, _ts: True))
    assert [e["model"] for e in (unpriced, priced, both) if not isinstance(e, Ignored)] == [
        "gpt-4-0613", "gpt-4", "gpt-4-0613"]


def cloudevent(attributes: dict[str, Any] | None = None, data: Any = None) -> CloudEventInput:
    base = {"specversion": "1.0", "id": "r-1", "source": "/billing", "time":
            "2024-05-01T12:00:00Z", "type": "io.costflux.usage.v1"}
    return CloudEventInput({**base, **(attributes or {})},
                           {"model": "gpt-4", "input_tokens": 10, "output_tokens": 2}
                           if data is None else data, b"original")


def judge(*events: CloudEventInput) -> Any:
    return judge_cloudevents(events, event_type="io.costflux.usage.v1", subject_label="team")


def test_a_usage_cloudevent_is_identified_by_source_and_id_and_timed_by_time() -> None:
    judged = judge(cloudevent({"subject": "search"}))
    assert judged.event_ids == ["ce:/billing:r-1"]
    assert orjson.loads(judged.events[0]) == {
        "model": "gpt-4", "input_tokens": 10, "output_tokens": 2,
        "event_id": "ce:/billing:r-1", "ts": "2024-05-01T12:00:00Z",
        "labels": {"team": "search"}}


def test_labels_in_data_win_over_the_subject() -> None:
    judged = judge(cloudevent({"subject": "search"}, {
        "model": "gpt-4", "input_tokens": 1, "output_tokens": 1, "labels": {"team": "ads"}}))
    assert orjson.loads(judged.events[0])["labels"] == {"team": "ads"}


def test_a_source_and_id_too_long_for_the_contract_are_hashed() -> None:
    judged = judge(cloudevent({"source": "s" * 300}))
    assert judged.event_ids[0].startswith("ce:sha256:") and len(judged.event_ids[0]) == 74


@pytest.mark.parametrize(("event", "reason", "says"), [
    (cloudevent({"type": "com.example.order"}), DeadLetterReason.INVALID_VALUE, "type"),
    (cloudevent({"specversion": "0.3"}), DeadLetterReason.INVALID_VALUE, "specversion"),
    (cloudevent({"id": ""}), DeadLetterReason.MISSING_FIELD, "'id'"),
    (cloudevent({"time": None}), DeadLetterReason.MISSING_FIELD, "'time'"),
    (cloudevent({"datacontenttype": "text/plain"}), DeadLetterReason.INVALID_VALUE, "JSON"),
    (cloudevent(data=[1, 2]), DeadLetterReason.NOT_AN_OBJECT, "object"),
    (cloudevent(data={"model": "gpt-4", "input_tokens": 1, "output_tokens": 1, "ts": 5}),
     DeadLetterReason.UNKNOWN_FIELD, "time"),
    (cloudevent(data={"input_tokens": 1, "output_tokens": 1}), DeadLetterReason.MISSING_FIELD,
     "model"),
    (cloudevent(data={"model": "gpt-4", "input_tokens": -1, "output_tokens": 1}),
     DeadLetterReason.NEGATIVE_VALUE, "input_tokens"),
    (cloudevent(data={"model": "gpt-4", "input_tokens": 1, "output_tokens": 1, "x": 1}),
     DeadLetterReason.UNKNOWN_FIELD, "x"),
])
def test_bad_cloudevents_are_rejected_with_a_reason(
    event: CloudEventInput, reason: DeadLetterReason, says: str
) -> None:
    judged = judge(cloudevent(), event)
    assert len(judged.events) == 1
    [(index, rejected)] = judged.rejected
    assert (index, rejected.reason, rejected.original) == (1, reason, b"original")
    assert says in rejected.detail


def test_events_are_batched_into_messages_under_the_size_limit() -> None:
    events = [orjson.dumps({"n": i, "pad": "x" * 50}) for i in range(100)]
    messages = batch_messages(events, max_bytes=1000)
    assert all(len(m) <= 1000 for m in messages)
    assert [e for m in messages for e in orjson.loads(m)] == [orjson.loads(e) for e in events]
    assert batch_messages([]) == []


def test_cache_writes_and_reasoning_tokens_are_read() -> None:
    event = usage_from_span(span({
        **USAGE, "gen_ai.usage.cache_creation.input_tokens": 30,
        "gen_ai.usage.reasoning.output_tokens": 12}), SpanMapping())
    assert not isinstance(event, Ignored)
    assert (event["cache_write_input_tokens"], event["reasoning_tokens"]) == (30, 12)
