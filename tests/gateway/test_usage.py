"""The gateway reads the usage OpenAI's and Anthropic's answers report, and bounds requests.

The expected numbers are copied by hand from the fixtures (see fixtures/SOURCE.md), never
computed by the code under test.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.gateway.sse import SseDataReader
from costflux.gateway.usage import (
    ROUTES,
    Route,
    StreamUsage,
    answer_usage,
    end_user,
    request_model,
    reservation_bound,
)
from costflux.schemas.usage import UsageEvent

FIXTURES = Path(__file__).parent / "fixtures"

STREAMS: list[tuple[str, Route, dict[str, int]]] = [
    ("openai_chat_stream.sse", "chat",
     {"input_tokens": 16, "output_tokens": 300, "cached_input_tokens": 0}),
    ("azure_chat_stream.sse", "chat",
     {"input_tokens": 15, "output_tokens": 78, "cached_input_tokens": 0,
      "reasoning_tokens": 64}),
    ("openai_completions_stream.sse", "completions",
     {"input_tokens": 14, "output_tokens": 16, "cached_input_tokens": 0}),
    ("openai_responses_stream.sse", "responses",
     {"input_tokens": 7112, "output_tokens": 463, "cached_input_tokens": 3072,
      "reasoning_tokens": 64}),
    ("openai_responses_spec_stream.sse", "responses",
     {"input_tokens": 37, "output_tokens": 11, "cached_input_tokens": 0}),
    # message_delta's final counts replace message_start's: 6 + 6289 read + 3337 written.
    ("anthropic_stream.sse", "messages",
     {"input_tokens": 9632, "output_tokens": 198, "cached_input_tokens": 6289,
      "cache_write_input_tokens": 3337}),
    ("anthropic_sdk_basic_stream.sse", "messages",
     {"input_tokens": 11, "output_tokens": 6, "cached_input_tokens": 0}),
]

ANSWERS: list[tuple[str, Route, dict[str, int]]] = [
    ("openai_chat_answer.json", "chat",
     {"input_tokens": 19, "output_tokens": 10, "cached_input_tokens": 0}),
    ("openai_completions_answer.json", "completions",
     {"input_tokens": 5, "output_tokens": 7, "cached_input_tokens": 0}),
    ("openai_embeddings_answer.json", "embeddings",
     {"input_tokens": 8, "output_tokens": 0, "cached_input_tokens": 0}),
    ("openai_responses_answer.json", "responses",
     {"input_tokens": 81, "output_tokens": 1035, "cached_input_tokens": 0,
      "reasoning_tokens": 832}),
    ("openai_responses_cached_answer.json", "responses",
     {"input_tokens": 3700, "output_tokens": 741, "cached_input_tokens": 2560,
      "reasoning_tokens": 640}),
    ("anthropic_answer.json", "messages",
     {"input_tokens": 12, "output_tokens": 29, "cached_input_tokens": 0}),
    # 2048 after the breakpoints + 1800 read + 248 written (148 for 5 minutes, 100 for 1 hour).
    ("anthropic_cache_ttl_usage.json", "messages",
     {"input_tokens": 4096, "output_tokens": 503, "cached_input_tokens": 1800,
      "cache_write_input_tokens": 148, "cache_write_1h_input_tokens": 100}),
]


def _read(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _stream_usage(route: Route, chunks: list[bytes]) -> dict[str, int] | None:
    stream = StreamUsage(route)
    for chunk in chunks:
        stream.feed(chunk)
    stream.close()
    return stream.usage


def _event(fields: dict[str, int]) -> UsageEvent:
    return UsageEvent.model_validate({"event_id": "r1", "ts": "2026-08-22T12:00:00Z",
                                      "model": "m", **fields})


def test_routes_name_the_five_apis() -> None:
    assert ROUTES == {"/v1/chat/completions": "chat", "/v1/completions": "completions",
                      "/v1/responses": "responses", "/v1/embeddings": "embeddings",
                      "/v1/messages": "messages"}


@pytest.mark.parametrize(("name", "route", "expected"), ANSWERS, ids=[a[0] for a in ANSWERS])
def test_answer_usage_of_recorded_answers(name: str, route: Route,
                                          expected: dict[str, int]) -> None:
    usage = answer_usage(route, json.loads(_read(name)))
    assert usage == expected
    _event(expected)  # the fields are a valid usage event as they are


@pytest.mark.parametrize(("name", "route", "expected"), STREAMS, ids=[s[0] for s in STREAMS])
def test_stream_usage_of_recorded_streams(name: str, route: Route,
                                          expected: dict[str, int]) -> None:
    assert _stream_usage(route, [_read(name)]) == expected


@given(case=st.sampled_from(STREAMS), line_end=st.sampled_from([b"\n", b"\r\n", b"\r"]),
       cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=40))
def test_stream_usage_is_the_same_however_the_bytes_are_split(
        case: tuple[str, Route, dict[str, int]], line_end: bytes, cuts: list[int]) -> None:
    name, route, expected = case
    # JSON strings escape their newlines, so every raw \n in a fixture ends a line.
    data = _read(name).replace(b"\n", line_end)
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    chunks = [data[start:end] for start, end in zip(points, points[1:], strict=False)]
    assert _stream_usage(route, chunks) == expected


def test_a_chat_stream_without_include_usage_reports_none() -> None:
    stream = _read("openai_chat_stream.sse")
    without_usage = b"\n\n".join(part for part in stream.split(b"\n\n")
                                 if b'"choices":[]' not in part)
    assert _stream_usage("chat", [without_usage]) is None
    assert _stream_usage("embeddings", [b""]) is None


def test_anthropic_message_delta_counts_replace_message_start_ones_only_when_given() -> None:
    start = {"type": "message_start", "message": {"usage": {
        "input_tokens": 40, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 1}}}
    first = {"type": "message_delta", "usage": {"output_tokens": 20}}
    last = {"type": "message_delta", "usage": {"output_tokens": 55, "input_tokens": 45,
                                                "cache_read_input_tokens": None,
                                                "output_tokens_details": {"thinking_tokens": 30}}}
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (start, first, last))
    assert _stream_usage("messages", [sse]) == {
        "input_tokens": 1345, "output_tokens": 55, "cached_input_tokens": 1000,
        "cache_write_1h_input_tokens": 200, "cache_write_input_tokens": 100,
        "reasoning_tokens": 30,
    }


def test_a_second_anthropic_message_start_starts_over() -> None:
    start = b'data: {"type":"message_start","message":{"usage":{"input_tokens":17}}}\n\n'
    sse = start + b'data: {"type":"message_delta","usage":{"output_tokens":9}}\n\n' + start
    assert _stream_usage("messages", [sse]) == {
        "input_tokens": 17, "output_tokens": 0, "cached_input_tokens": 0}
    assert _stream_usage("messages", [b'data: {"type":"message_delta","usage":'
                                      b'{"output_tokens":9}}\n\n']) is None


@pytest.mark.parametrize("kind", ["response.incomplete", "response.failed"])
def test_responses_that_end_early_report_their_usage(kind: str) -> None:
    sse = (b'event: response.created\ndata: {"type":"response.created","response":'
           b'{"usage":null}}\n\n'
           b'event: ' + kind.encode() + b'\ndata: {"type":"' + kind.encode() + b'","response":'
           b'{"status":"incomplete","usage":{"input_tokens":30,"output_tokens":16}}}\n\n')
    assert _stream_usage("responses", [sse]) == {
        "input_tokens": 30, "output_tokens": 16, "cached_input_tokens": 0}


def test_bad_json_and_other_events_are_skipped() -> None:
    sse = (b": keep-alive\n\nretry: 3000\n\ndata: {not json usage\n\n"
           b'data: ["usage"]\n\n'
           b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
           b"data: {truncated usage")
    assert _stream_usage("chat", [sse]) == {
        "input_tokens": 3, "output_tokens": 1, "cached_input_tokens": 0}


def test_the_last_usage_of_a_chat_stream_holds() -> None:
    # Servers that count as they go send a cumulative usage in every chunk.
    sse = b"".join(b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": '
                   + str(n).encode() + b"}}\n\n" for n in (1, 2, 3))
    assert _stream_usage("chat", [sse]) == {
        "input_tokens": 5, "output_tokens": 3, "cached_input_tokens": 0}


def test_openai_kinds_of_tokens_become_their_own_fields() -> None:
    answer = {"usage": {
        "prompt_tokens": 1000, "completion_tokens": 200,
        "prompt_tokens_details": {"cached_tokens": 600, "audio_tokens": 300,
                                  "cache_write_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 120, "audio_tokens": 60},
    }}
    usage = answer_usage("chat", answer)
    assert usage == {"input_tokens": 1000, "output_tokens": 200, "cached_input_tokens": 600,
                     "cache_write_input_tokens": 50, "audio_input_tokens": 300,
                     "reasoning_tokens": 120, "audio_output_tokens": 60}
    responses = answer_usage("responses", {"usage": {
        "input_tokens": 500, "output_tokens": 10,
        "input_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 400}}})
    assert responses == {"input_tokens": 500, "output_tokens": 10, "cached_input_tokens": 100,
                         "cache_write_input_tokens": 400}


def test_parts_are_capped_at_what_their_total_leaves() -> None:
    usage = answer_usage("chat", {"usage": {
        "prompt_tokens": 100, "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 80, "audio_tokens": 50},
        "completion_tokens_details": {"reasoning_tokens": 8, "audio_tokens": 8}}})
    assert usage == {"input_tokens": 100, "output_tokens": 10, "cached_input_tokens": 80,
                     "audio_input_tokens": 20, "reasoning_tokens": 8, "audio_output_tokens": 2}
    assert answer_usage("chat", {"usage": {"prompt_tokens": 5, "completion_tokens": 0,
                                           "prompt_tokens_details": {"cached_tokens": 9}}}) == {
        "input_tokens": 5, "output_tokens": 0, "cached_input_tokens": 5}
    # Anthropic: the 1-hour part cannot exceed the writes it is part of.
    anthropic = answer_usage("messages", {"usage": {
        "input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": 10,
        "cache_creation": {"ephemeral_1h_input_tokens": 25}}})
    assert anthropic == {"input_tokens": 11, "output_tokens": 2, "cached_input_tokens": 0,
                         "cache_write_1h_input_tokens": 10}


def test_anthropic_optional_counts_may_be_null_or_only_broken_down() -> None:
    assert answer_usage("messages", {"usage": {
        "input_tokens": 12, "output_tokens": 3, "cache_creation_input_tokens": None,
        "cache_read_input_tokens": None, "cache_creation": None}}) == {
        "input_tokens": 12, "output_tokens": 3, "cached_input_tokens": 0}
    assert answer_usage("messages", {"usage": {
        "input_tokens": 2, "output_tokens": 3,
        "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60}}}
    ) == {"input_tokens": 102, "output_tokens": 3, "cached_input_tokens": 0,
          "cache_write_1h_input_tokens": 60, "cache_write_input_tokens": 40}


def test_anthropic_server_web_searches_are_counted_per_search() -> None:
    # The usage of the web search tool's example answer in Anthropic's documentation
    # (docs.anthropic.com, "Web search tool", Usage).
    usage = {"input_tokens": 105, "output_tokens": 6039, "cache_read_input_tokens": 7123,
             "cache_creation_input_tokens": 7345, "server_tool_use": {"web_search_requests": 1}}
    assert answer_usage("messages", {"usage": usage}) == {
        "input_tokens": 105 + 7123 + 7345, "output_tokens": 6039,
        "cached_input_tokens": 7123, "cache_write_input_tokens": 7345, "web_search_calls": 1}
    usage["server_tool_use"] = {"web_search_requests": "1"}  # unreadable: the tokens still count
    assert "web_search_calls" not in (answer_usage("messages", {"usage": usage}) or {})
    stream = StreamUsage("messages")
    stream.feed(b'data: {"type": "message_start", "message": {"usage": {"input_tokens": 9}}}\n\n'
                b'data: {"type": "message_delta", "usage": {"output_tokens": 4, '
                b'"server_tool_use": {"web_search_requests": 2}}}\n\n')
    stream.close()
    assert stream.usage == {"input_tokens": 9, "output_tokens": 4, "cached_input_tokens": 0,
                            "web_search_calls": 2}


@pytest.mark.parametrize("usage", [
    None, [], {}, {"completion_tokens": 3},
    {"prompt_tokens": -1, "completion_tokens": 3},
    {"prompt_tokens": "12", "completion_tokens": 3},
    {"prompt_tokens": True, "completion_tokens": 3},
    {"prompt_tokens": 12.0, "completion_tokens": 3},
    {"prompt_tokens": 12, "completion_tokens": -3},
    {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": "1"}},
])
def test_unreadable_usage_is_none_not_zero(usage: Any) -> None:
    answer = {} if usage is None else {"usage": usage}
    assert answer_usage("chat", answer) is None


def test_unreadable_responses_and_anthropic_usage_is_none() -> None:
    assert answer_usage("responses", {"usage": {"output_tokens": 3}}) is None
    assert answer_usage("messages", {"usage": {"output_tokens": 3}}) is None
    assert answer_usage("messages", {"usage": {"input_tokens": 3,
                                               "cache_read_input_tokens": -1}}) is None
    assert answer_usage("embeddings", {"usage": {"total_tokens": 4}}) == {
        "input_tokens": 4, "output_tokens": 0, "cached_input_tokens": 0}


_COUNT = st.one_of(st.none(), st.integers(min_value=-2, max_value=2_000), st.booleans(),
                   st.text(max_size=2))
_DETAILS = st.one_of(st.none(), st.dictionaries(st.sampled_from(
    ["cached_tokens", "audio_tokens", "cache_write_tokens", "reasoning_tokens",
     "thinking_tokens", "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]), _COUNT))
_USAGE = st.fixed_dictionaries({}, optional={
    name: _COUNT for name in ("prompt_tokens", "completion_tokens", "total_tokens",
                              "input_tokens", "output_tokens", "cache_read_input_tokens",
                              "cache_creation_input_tokens")
} | {name: _DETAILS for name in ("prompt_tokens_details", "completion_tokens_details",
                                 "input_tokens_details", "output_tokens_details",
                                 "cache_creation")})


@given(route=st.sampled_from(list(ROUTES.values())), usage=_USAGE)
def test_any_usage_gives_none_or_a_valid_event(route: Route, usage: dict[str, Any]) -> None:
    fields = answer_usage(route, {"usage": usage})
    if fields is not None:
        _event(fields)
        assert all(value > 0 for name, value in fields.items()
                   if name not in ("input_tokens", "output_tokens", "cached_input_tokens"))


# --- the SSE reader ---------------------------------------------------------------------------


def test_sse_events_follow_the_event_stream_rules() -> None:
    reader = SseDataReader()
    events = reader.feed(b"\xef\xbb\xbfdata: first\ndata:second\n\nevent: x\nid: 1\n: hi\n"
                         b"data\n\n\n\ndata:  two spaces\r\rdata: unfinished")
    assert events == [b"first\nsecond", b" two spaces"]
    assert reader.close() == [b"unfinished"]
    assert reader.close() == []


def test_a_crlf_split_between_pieces_ends_one_line() -> None:
    reader = SseDataReader()
    assert reader.feed(b"data: a\r") == []
    assert reader.feed(b"") == []
    assert reader.feed(b"\ndata: b\r") == []
    assert reader.feed(b"\n\r\n") == [b"a\nb"]


def test_an_oversized_event_is_dropped_and_the_next_read() -> None:
    reader = SseDataReader(max_event_bytes=64)
    assert reader.feed(b"data: " + b"x" * 40) == []
    assert reader.feed(b"x" * 40) == []  # the line alone is over the limit
    assert reader.feed(b"y" * 1000 + b"\n\ndata: small\n\n") == [b"small"]
    assert reader.feed(b"data: " + b"z" * 40 + b"\ndata: " + b"z" * 40 + b"\n\n") == []
    assert reader.feed(b"data: ok\n\n") == [b"ok"]


def test_utf8_split_anywhere_reads_the_same() -> None:
    data = ('data: {"type":"message_start","message":{"usage":{"input_tokens":4}},'
            '"note":"naïve — 東京"}\n\n').encode()
    for cut in range(len(data)):
        assert _stream_usage("messages", [data[:cut], data[cut:]]) == {
            "input_tokens": 4, "output_tokens": 0, "cached_input_tokens": 0}


# --- the request --------------------------------------------------------------------------------


def test_request_model() -> None:
    assert request_model("chat", {"model": "gpt-4.1-nano", "messages": []}) == "gpt-4.1-nano"
    for body in ({}, {"model": ""}, {"model": "  "}, {"model": 4}, {"model": "m" * 257}):
        assert request_model("chat", body) is None


# The request bodies of the openai-openapi examples whose answers are fixtures.
_COMPLETIONS_REQUEST = {"model": "VAR_completion_model_id", "prompt": "Say this is a test",
                        "max_tokens": 7, "temperature": 0}
_CHAT_REQUEST = {"model": "VAR_chat_model_id", "messages": [
    {"role": "developer", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"}]}


@pytest.mark.parametrize(("route", "body", "output"), [
    ("completions", _COMPLETIONS_REQUEST, 7),
    ("completions", {**_COMPLETIONS_REQUEST, "n": 2, "best_of": 3}, 21),
    ("chat", _CHAT_REQUEST, None),
    ("chat", {**_CHAT_REQUEST, "max_tokens": 100}, 100),
    ("chat", {**_CHAT_REQUEST, "max_completion_tokens": 300, "max_tokens": 100, "n": 2}, 600),
    ("chat", {**_CHAT_REQUEST, "max_completion_tokens": None, "n": None}, None),
    ("chat", {**_CHAT_REQUEST, "max_completion_tokens": "300"}, None),
    ("chat", {**_CHAT_REQUEST, "max_completion_tokens": True}, None),
    ("chat", {**_CHAT_REQUEST, "max_completion_tokens": -5, "max_tokens": 9}, 9),
    ("responses", {"model": "o3-mini", "input": "How much wood would a woodchuck chuck?"}, None),
    ("responses", {"model": "o3-mini", "input": "x", "max_output_tokens": 2048}, 2048),
    ("responses", {"model": "o3-mini", "input": "x", "max_tokens": 2048}, None),
    ("messages", {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": []}, 1024),
    ("embeddings", {"model": "text-embedding-ada-002", "input": "The food was delicious"}, 0),
])
def test_reservation_bound(route: Route, body: dict[str, Any], output: int | None) -> None:
    raw_size = len(json.dumps(body).encode())
    assert reservation_bound(route, body, raw_size) == (raw_size, output)


def test_reservation_bound_needs_a_size() -> None:
    with pytest.raises(ValueError, match="size in bytes"):
        reservation_bound("chat", _CHAT_REQUEST, -1)


@given(text=st.text(max_size=300))
def test_the_body_size_bounds_the_prompts_tokens(text: str) -> None:
    """Real byte-level BPE vocabularies (OpenAI's o200k_base, LiteLLM's copy of Anthropic's
    older tokenizer) never spend a token on less than a byte of the text."""
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": text}]},
                      ensure_ascii=False).encode()
    bound, _ = reservation_bound("chat", {}, len(body))
    for count in _token_counters():
        assert count(text) <= bound


_COUNTERS: list[Callable[[str], int]] = []


def _token_counters() -> list[Callable[[str], int]]:
    if _COUNTERS:
        return _COUNTERS
    tiktoken = pytest.importorskip("tiktoken")
    hf = pytest.importorskip("tokenizers")
    litellm = importlib.util.find_spec("litellm")  # finds it without importing it
    if litellm is None or not litellm.submodule_search_locations:
        pytest.skip("litellm, which bundles the tokenizer files, is not installed")
    bundled = Path(litellm.submodule_search_locations[0]) / "litellm_core_utils/tokenizers"
    if not (bundled / "anthropic_tokenizer.json").exists():
        pytest.skip("LiteLLM's bundled tokenizer files are not there")
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)  # else tiktoken downloads the vocabulary
    try:
        o200k = tiktoken.get_encoding("o200k_base")
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    claude = hf.Tokenizer.from_file(str(bundled / "anthropic_tokenizer.json"))
    _COUNTERS.append(lambda text: len(o200k.encode(text, disallowed_special=())))
    _COUNTERS.append(lambda text: len(claude.encode(text, add_special_tokens=False).ids))
    return _COUNTERS


# --- the end user ---------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "body", "header", "expected"), [
    ("chat", {"user": "user-1234"}, None, "user-1234"),
    ("chat", {"user": "user-1234"}, "alice", "alice"),
    ("chat", {"user": "user-1234"}, "  ", "user-1234"),
    ("chat", {"safety_identifier": "safety-identifier-1234"}, None, "safety-identifier-1234"),
    ("responses", {"user": None, "safety_identifier": "h-9f2"}, None, "h-9f2"),
    ("completions", {"user": "u"}, None, "u"),
    ("embeddings", {"user": "u"}, None, "u"),
    ("messages", {"metadata": {"user_id": "13803d75-b4b5-4c3e"}}, None, "13803d75-b4b5-4c3e"),
    ("messages", {"user": "openai-style"}, None, ""),
    ("chat", {"metadata": {"user_id": "anthropic-style"}}, None, ""),
    ("chat", {"user": "sk-proj-abc"}, None, ""),
    ("chat", {"user": "x"}, "Bearer sk-abc", "x"),
    ("messages", {"metadata": {"user_id": "SK-ant-api03-x"}}, None, ""),
    ("chat", {"user": 42}, None, ""),
    ("chat", {}, None, ""),
])
def test_end_user(route: Route, body: dict[str, Any], header: str | None,
                  expected: str) -> None:
    assert end_user(route, body, header) == expected


def test_end_user_is_cut_to_a_label_value() -> None:
    assert end_user("chat", {"user": "u" * 300}, None) == "u" * 256


def test_the_modules_import_no_io() -> None:
    code = ("import sys, costflux.gateway.usage, costflux.gateway.identity; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'redis', 'aiohttp', "
            "'confluent_kafka', 'faust', 'prometheus_client', 'requests', 'httpx'} "
            "| {m for m in sys.modules if m.startswith('costflux.streams')}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    assert out.strip() == "[]"
