"""Fuzzing the hot path's judge with raw message bytes: never a crash, never a lost event.

Hypothesis writes usage messages byte by byte (one event, or a JSON array of many, as
producers batch them), valid or with one flaw each: broken JSON, wrong types, negative, huge
or float token counts, NaN and ±Infinity (as JSON tokens and as exponents past a double),
unknown models, far-future and very old timestamps, oversized labels, invalid UTF-8 and lone
surrogates, deep nesting, duplicate keys. ``judge`` (what the ingest loop calls per partition)
must never raise; every element is counted, a duplicate, or dead-lettered exactly once with
the reason an independent oracle predicts; a dead-letter record is bounded and valid UTF-8;
a counted event costs exactly what a ``Decimal`` pricing of it says, at the price in force at
its event time (backfills of old data included).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from costflux.core.events import (
    DEADLETTER_RECORD_MAX_BYTES,
    Rejected,
    deadletter_record,
    decode_usage_fields,
    decode_usage_message,
)
from costflux.core.ingest import Candidate, IngestRules, Judged, PartitionClock, judge
from costflux.core.pricing_file import parse_pricing_text
from costflux.schemas.deadletter import DeadLetterReason as R
from costflux.schemas.usage import UsageEvent

#: Model m changes price on 2024-01-01; big has a long-context tier; newcomer is priced only
#: from 2024-06-01 (earlier events of it are unknown_model).
PRICING_TEXT = """
model_costs:
  m:
    input_tokens: 0.001
    output_tokens: 0.002
    cached_input_tokens: 0.0005
    changes:
      - {effective_from: "2024-01-01T00:00:00Z",
         input_tokens: 0.003, output_tokens: 0.004, cached_input_tokens: 0.001}
  big:
    input_per_1m: 15
    output_per_1m: 75
    cached_input_per_1m: 1.5
    tiers:
      - {above_tokens: 200000, input_per_1m: 30, output_per_1m: 150, cached_input_per_1m: 3}
  newcomer:
    changes:
      - {effective_from: "2024-06-01T00:00:00Z", input_per_1m: 1, output_per_1m: 2}
"""
PRICES = parse_pricing_text(PRICING_TEXT)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_MS, HOUR_MS, DAY_MS = 60_000, 3_600_000, 86_400_000
NOW_MS = 1_719_792_000_000  # 2024-07-01T00:00:00Z: the judge's wall clock
M_CHANGE_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
NEWCOMER_FROM_MS = 1_717_200_000_000  # 2024-06-01T00:00:00Z
RULES = IngestRules(window_sizes_s=(60, 3600), allowed_lateness_ms=300_000, max_future_ms=900_000)
FUTURE_LIMIT_MS = NOW_MS + RULES.max_future_ms
LAST_TIME_MS = 253_402_128_000_000  # 9999-12-31T00:00:00Z: the schema's bound (exclusive)
K, M1 = Decimal(1000), Decimal(10**6)


Rates = tuple[Decimal, Decimal, Decimal]


def dollars_per_token(model: str, ts_ms: int, prompt: int) -> Rates | None:
    """(input, output, cached input) $/token in force, written from the price file by hand."""
    if model == "m":
        if ts_ms < M_CHANGE_MS:
            return Decimal("0.001") / K, Decimal("0.002") / K, Decimal("0.0005") / K
        return Decimal("0.003") / K, Decimal("0.004") / K, Decimal("0.001") / K
    if model == "big":
        if prompt > 200_000:  # the whole request at the long-context rate
            return Decimal(30) / M1, Decimal(150) / M1, Decimal(3) / M1
        return Decimal(15) / M1, Decimal(75) / M1, Decimal("1.5") / M1
    if model == "newcomer" and ts_ms >= NEWCOMER_FROM_MS:
        return Decimal(1) / M1, Decimal(2) / M1, Decimal(1) / M1  # cached = input by default
    return None


def decimal_cost(model: str, ts_ms: int, input_tokens: int, output_tokens: int,
                 cached: int) -> Decimal | None:
    """The event's cost in dollars, or None when no price is in force at ``ts_ms``."""
    rates = dollars_per_token(model, ts_ms, input_tokens)
    if rates is None:
        return None
    p_in, p_out, p_cached = rates
    return (input_tokens - cached) * p_in + cached * p_cached + output_tokens * p_out


# --- what each generated element is expected to become ----------------------------------------


@dataclass(frozen=True)
class Valid:
    """An element the decoder must accept; what happens next depends on time and price."""

    event_id: str
    ts_ms: int
    model: str
    input_tokens: int
    output_tokens: int
    cached: int
    dims: tuple[str, ...]


@dataclass(frozen=True)
class Flawed:
    """An element the decoder must reject, with one of these reasons."""

    reasons: frozenset[R]
    what: str = ""


Expected = Valid | Flawed


def flawed(reason: R, what: str) -> Flawed:
    return Flawed(frozenset({reason}), what)


@dataclass
class Element:
    text: bytes  # the element's JSON text, written by hand so flaws can be textual
    expected: Expected


@dataclass
class Message:
    value: bytes
    elements: list[Element]
    batched: bool
    whole: Flawed | None = None  # the message as a whole is rejected (one dead letter)
    notes: list[str] = field(default_factory=list)


# --- strategies -------------------------------------------------------------------------------

LABEL_KEYS = ("team", "project", "app", "namespace", "deployment", "cluster", "owner")
label_text = st.text(max_size=12)  # any Unicode text (never surrogates: they are not text)
event_ids = st.one_of(st.sampled_from(["dup-a", "dup-b", "dup-c"]),
                      st.text(min_size=1, max_size=20))


def iso_ms(ts_ms: int, offset_minutes: int = 0) -> str:
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = (EPOCH + timedelta(milliseconds=ts_ms)).astimezone(zone)
    text = moment.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if offset_minutes == 0 else text


@st.composite
def event_times(draw: st.DrawFn) -> int:
    """Now-ish, backfills (before and after the price change), and the exact boundaries."""
    return draw(st.one_of(
        st.integers(NOW_MS - 2 * HOUR_MS, FUTURE_LIMIT_MS + MINUTE_MS),
        st.sampled_from([FUTURE_LIMIT_MS, FUTURE_LIMIT_MS + 1, M_CHANGE_MS - 1, M_CHANGE_MS,
                         NEWCOMER_FROM_MS - 1, NEWCOMER_FROM_MS, 0]),
        st.integers(M_CHANGE_MS - 30 * DAY_MS, M_CHANGE_MS + 30 * DAY_MS),  # backfill
        st.integers(FUTURE_LIMIT_MS, LAST_TIME_MS - 1),  # far future, still a valid time
    ))


@st.composite
def ts_json(draw: st.DrawFn, ts_ms: int) -> Any:
    """The same instant as RFC 3339 (Z or an offset), epoch seconds or epoch milliseconds."""
    form = draw(st.sampled_from(["z", "offset", "seconds", "millis"]))
    if form == "seconds" and ts_ms % 1000 == 0 and ts_ms // 1000 <= 2 * 10**10:
        return ts_ms // 1000
    if form == "millis" and ts_ms > 2 * 10**10:  # documented: a number > 2e10 reads as ms
        return ts_ms
    if form == "offset" and ts_ms > DAY_MS and ts_ms < LAST_TIME_MS - DAY_MS:
        return iso_ms(ts_ms, draw(st.sampled_from([-480, 330, 60, 840])))
    return iso_ms(ts_ms)


@st.composite
def valid_documents(draw: st.DrawFn) -> tuple[dict[str, Any], Valid]:
    ts_ms = draw(event_times())
    model = draw(st.sampled_from(["m", "m", "big", "newcomer", "gpt-99"]))
    big_prompts = st.integers(190_000, 10_000_000) if model == "big" else st.nothing()
    input_tokens = draw(st.one_of(st.integers(0, 5000), st.just(10_000_000), big_prompts))
    cached = draw(st.integers(0, input_tokens))
    output_tokens = draw(st.one_of(st.integers(0, 5000), st.just(10_000_000)))
    labels = draw(st.dictionaries(st.sampled_from(LABEL_KEYS), label_text, max_size=6))
    document: dict[str, Any] = {
        "event_id": draw(event_ids), "ts": draw(ts_json(ts_ms)), "model": model,
        "input_tokens": input_tokens, "output_tokens": output_tokens,
    }
    write_defaults = draw(st.booleans())  # cached 0 and empty labels: written or left out
    if cached or write_defaults:
        document["cached_input_tokens"] = cached
    if labels or write_defaults:
        document["labels"] = labels
    optional = draw(st.fixed_dictionaries({}, optional={
        "latency_ms": st.floats(0, 1e6, allow_nan=False),
        "gpu_seconds": st.floats(0, 1e4, allow_nan=False),
        "status": st.sampled_from(["ok", "error"]),
        "deployment": st.text(min_size=1, max_size=10),
    }))
    document.update(optional)
    deployment = document.get("deployment") or labels.get("deployment", "")
    dims = (model, labels.get("team", ""), labels.get("project", ""), labels.get("app", ""),
            labels.get("namespace", ""), deployment, labels.get("cluster", ""))
    return document, Valid(document["event_id"], ts_ms, model, input_tokens, output_tokens,
                           cached, dims)


def dumps(document: Any) -> bytes:
    """JSON text as Python writes it (NaN/Infinity tokens for non-finite floats)."""
    return json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")


def replace_value(document: dict[str, Any], key: str, raw_json: bytes) -> bytes:
    """``document`` with ``key``'s value written as the literal JSON text ``raw_json``."""
    marker = "\x00MARK\x00"
    text = dumps({**document, key: marker})
    return text.replace(dumps(marker), raw_json)


#: Nested deeper than orjson reads: the message as a whole is bad_json, unless Python's json
#: (the fallback) reads it, then the element alone is wrong_type. Both are right.
UNREADABLE = "nested past the JSON readers' depth limit"
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens")
NON_FINITE_TEXTS = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999", b"1E+309"]


@st.composite
def flawed_elements(draw: st.DrawFn) -> Element:
    """A valid document with one flaw, and the reason(s) that flaw must be named by."""
    document, _ = draw(valid_documents())
    document["cached_input_tokens"] = 0  # so a token flaw cannot also break cached <= input
    value: Any
    kind = draw(st.sampled_from([
        "negative", "absurd", "beyond_64_bits", "float_tokens", "string_tokens", "bool_tokens",
        "non_finite", "unknown_field", "missing_field", "cached_over_input", "long_label",
        "long_label_key", "empty_label_key", "many_labels", "label_not_string", "bad_ts",
        "ts_before_1970", "ts_past_9999", "lone_surrogate", "status", "empty_event_id",
        "not_an_object", "deep_nesting",
    ]))
    token = draw(st.sampled_from(TOKEN_FIELDS[:2]))
    if kind == "negative":
        text = replace_value(document, token, str(draw(st.integers(-10**30, -1))).encode())
        return Element(text, flawed(R.NEGATIVE_VALUE, kind))
    if kind == "absurd":
        value = draw(st.integers(10_000_001, 2**63 - 1))
        return Element(replace_value(document, token, str(value).encode()),
                       flawed(R.ABSURD_VALUE, kind))
    if kind == "beyond_64_bits":
        value = draw(st.integers(2**64, 10**40))
        return Element(replace_value(document, token, str(value).encode()),
                       flawed(R.ABSURD_VALUE, kind))
    if kind == "float_tokens":
        value = draw(st.sampled_from([b"1.5", b"100.0", b"1e3", b"0.0"]))
        return Element(replace_value(document, token, value), flawed(R.WRONG_TYPE, kind))
    if kind == "string_tokens":
        return Element(dumps({**document, token: "100"}), flawed(R.WRONG_TYPE, kind))
    if kind == "bool_tokens":
        return Element(dumps({**document, token: True}), flawed(R.WRONG_TYPE, kind))
    if kind == "non_finite":
        where = draw(st.sampled_from([*TOKEN_FIELDS, "latency_ms", "gpu_seconds", "ts"]))
        text = replace_value(document, where, draw(st.sampled_from(NON_FINITE_TEXTS)))
        return Element(text, flawed(R.NOT_FINITE, kind))
    if kind == "unknown_field":
        text = dumps({**document, draw(st.sampled_from(["input_token", "cost", "x"])): 1})
        return Element(text, flawed(R.UNKNOWN_FIELD, kind))
    if kind == "missing_field":
        gone = draw(st.sampled_from(["event_id", "ts", "model", *TOKEN_FIELDS[:2]]))
        text = dumps({k: v for k, v in document.items() if k != gone})
        return Element(text, flawed(R.MISSING_FIELD, kind))
    if kind == "cached_over_input":
        text = dumps({**document, "input_tokens": 5, "cached_input_tokens": 6})
        return Element(text, flawed(R.INVALID_VALUE, kind))
    if kind == "long_label":
        value = "é" * draw(st.integers(257, 5000))
        text = dumps({**document, "labels": {"team": value}})
        return Element(text, flawed(R.OVERSIZED_LABELS, kind))
    if kind == "long_label_key":
        text = dumps({**document, "labels": {"k" * draw(st.integers(129, 5000)): "x"}})
        return Element(text, flawed(R.OVERSIZED_LABELS, kind))
    if kind == "empty_label_key":
        text = dumps({**document, "labels": {"": "x"}})
        return Element(text, flawed(R.OVERSIZED_LABELS, kind))
    if kind == "many_labels":
        labels = {f"k{i}": "v" for i in range(draw(st.integers(33, 200)))}
        return Element(dumps({**document, "labels": labels}),
                       flawed(R.OVERSIZED_LABELS, kind))
    if kind == "label_not_string":
        value = draw(st.sampled_from([1, None, ["a"], {"a": "b"}, 1.5, True]))
        text = dumps({**document, "labels": {"team": value}})
        return Element(text, flawed(R.WRONG_TYPE, kind))
    if kind == "bad_ts":
        value = draw(st.sampled_from(["yesterday", "2024-05-01T12:00:00", "2024-02-30T00:00:00Z",
                                      "", "12:00", True, None, [1]]))
        return Element(dumps({**document, "ts": value}), flawed(R.BAD_TIMESTAMP, kind))
    if kind == "ts_before_1970":
        value = draw(st.sampled_from(["1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", -1]))
        return Element(dumps({**document, "ts": value}), flawed(R.BAD_TIMESTAMP, kind))
    if kind == "ts_past_9999":
        value = draw(st.sampled_from(["9999-12-31T00:00:00Z", "9999-12-31T23:59:59.999Z",
                                      10**20, 1e300]))
        return Element(dumps({**document, "ts": value}), flawed(R.BAD_TIMESTAMP, kind))
    if kind == "lone_surrogate":
        # A JSON escape of half a UTF-16 pair: valid JSON syntax, but no Unicode text.
        where = draw(st.sampled_from(["label_value", "label_key", "event_id", "model"]))
        escape = draw(st.sampled_from([rb'"\ud800"', rb'"a\udfffb"', rb'"\udc00\ud800"']))
        if where == "label_value":
            text = replace_value(document, "labels", b'{"team": ' + escape + b"}")
        elif where == "label_key":
            text = replace_value(document, "labels", b"{" + escape + b': "x"}')
        else:
            text = replace_value(document, where, escape)
        return Element(text, Flawed(frozenset({R.INVALID_VALUE, R.WRONG_TYPE, R.BAD_JSON}), kind))
    if kind == "status":
        return Element(dumps({**document, "status": "maybe"}), flawed(R.WRONG_TYPE, kind))
    if kind == "empty_event_id":
        return Element(dumps({**document, "event_id": ""}), flawed(R.INVALID_VALUE, kind))
    if kind == "not_an_object":
        value = draw(st.sampled_from([b"42", b'"text"', b"null", b"[]", b"true"]))
        return Element(value, flawed(R.NOT_AN_OBJECT, kind))
    # deep_nesting: a label nested deeper than orjson writes (255) or Python reads (~1000)
    depth = draw(st.sampled_from([50, 300, 900, 1200, 5000]))
    text = replace_value(document, "labels", b'{"team": ' + b"[" * depth + b"]" * depth + b"}")
    if depth > 1000:  # past orjson's limit; whether Python's json reads it depends on the stack
        return Element(text, flawed(R.WRONG_TYPE, UNREADABLE))
    return Element(text, flawed(R.WRONG_TYPE, kind))


@st.composite
def duplicate_key_elements(draw: st.DrawFn) -> Element:
    """A key written twice: every JSON reader here keeps the last, and so must the judge."""
    document, valid = draw(valid_documents())
    first = draw(st.integers(0, 5000))
    text = dumps({**document, "output_tokens": first})
    text = text[:-1] + b', "output_tokens": ' + str(valid.output_tokens).encode() + b"}"
    return Element(text, valid)


elements = st.one_of(
    valid_documents().map(lambda pair: Element(dumps(pair[0]), pair[1])),
    flawed_elements(),
    duplicate_key_elements(),
)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    """One element alone, or a batch of them, optionally broken as a whole."""
    batched = draw(st.booleans())
    parts = draw(st.lists(elements, min_size=1, max_size=6 if batched else 1))
    value = b"[" + b", ".join(e.text for e in parts) + b"]" if batched else parts[0].text
    breakage = draw(st.sampled_from(["none"] * 6 + [
        "truncate", "invalid_utf8", "trailing_garbage", "empty", "random_bytes", "utf8_bom"]))
    if breakage == "none":
        if not batched and value[:1] == b"[":  # a lone element that is itself an array
            return Message(value, parts, True, Flawed(frozenset({R.NOT_AN_OBJECT}), "array"))
        return Message(value, parts, batched)
    if breakage == "truncate" and len(value) > 1:
        cut = draw(st.integers(1, len(value) - 1))
        return Message(value[:cut], parts, batched, Flawed(frozenset(R), breakage))
    if breakage == "invalid_utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe9", b"\x80"]))
        quote = value.find(b'"', 1)
        at = quote + 1 if quote > 0 else len(value) // 2
        return Message(value[:at] + bad + value[at:], parts, batched,
                       Flawed(frozenset({R.BAD_JSON, R.INVALID_VALUE}), breakage))
    if breakage == "trailing_garbage":
        return Message(value + b" }x", parts, batched, Flawed(frozenset({R.BAD_JSON}), breakage))
    if breakage == "empty":
        return Message(b"", parts, batched, Flawed(frozenset({R.BAD_JSON}), breakage))
    if breakage == "utf8_bom":
        return Message(b"\xef\xbb\xbf" + value, parts, batched,
                       Flawed(frozenset({R.BAD_JSON}), breakage))
    noise = draw(st.binary(min_size=1, max_size=64))
    return Message(noise, parts, batched, Flawed(frozenset(R), "random_bytes"))


# --- the oracle -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the oracle expects of one element: counted (with its exact cost) or a reason."""

    reasons: frozenset[R] | None = None
    cost: Decimal | None = None
    valid: Valid | None = None


def has_unreadable(message: Message) -> bool:
    return any(getattr(e.expected, "what", "") == UNREADABLE for e in message.elements)


def oracle(sequence: list[Message], unread: set[int]) -> list[list[Outcome]]:
    """Expected outcome of every element, judging in order like one partition does.

    ``unread``: the messages nested past the JSON readers' depth that were rejected as a whole
    (which depends on the stack the judge runs on): their valid elements never count.
    """
    max_ts: int | None = None
    outcomes = []
    for offset, message in enumerate(sequence):
        if message.whole is not None or offset in unread:
            outcomes.append([Outcome(reasons=message.whole.reasons if message.whole
                                     else frozenset({R.BAD_JSON}))])
            continue
        row = []
        for element in message.elements:
            expected = element.expected
            if isinstance(expected, Flawed):
                row.append(Outcome(reasons=expected.reasons))
                continue
            cost = decimal_cost(expected.model, expected.ts_ms, expected.input_tokens,
                                expected.output_tokens, expected.cached)
            window_end = expected.ts_ms - expected.ts_ms % MINUTE_MS + MINUTE_MS
            if expected.ts_ms > FUTURE_LIMIT_MS:
                row.append(Outcome(reasons=frozenset({R.FUTURE_TIMESTAMP})))
            elif cost is None:
                row.append(Outcome(reasons=frozenset({R.UNKNOWN_MODEL})))
            elif max_ts is not None and window_end <= max_ts - RULES.allowed_lateness_ms:
                row.append(Outcome(reasons=frozenset({R.LATE})))
            else:
                max_ts = expected.ts_ms if max_ts is None else max(max_ts, expected.ts_ms)
                row.append(Outcome(cost=cost, valid=expected))
        outcomes.append(row)
    return outcomes


# --- the properties ---------------------------------------------------------------------------


def judge_all(sequence: list[Message]) -> Judged[Candidate]:
    return judge([(offset, m.value) for offset, m in enumerate(sequence)],
                 PartitionClock(), PRICES, RULES, NOW_MS)


def assert_deadletter_is_bounded_utf8(offset: int, rejected: Rejected, message: bytes) -> None:
    record = deadletter_record(rejected, "llm.usage.v1", 3, offset)
    assert len(record) <= DEADLETTER_RECORD_MAX_BYTES
    parsed = orjson.loads(record)  # orjson refuses invalid UTF-8 and lone surrogates
    record.decode("utf-8")
    assert parsed["reason"] == rejected.reason.value
    assert (parsed["source_partition"], parsed["source_offset"]) == (3, offset)
    original = base64.b64decode(parsed["original_b64"])
    if rejected.batch_index is None:
        assert message.startswith(original)  # the message itself (a prefix, when truncated)
        assert original == message or len(original) < len(message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=8))
def test_judge_never_raises_and_accounts_for_every_element(sequence: list[Message]) -> None:
    judged = judge_all(sequence)
    seen: dict[tuple[int, int | None], Candidate | Rejected] = {}  # (offset, batch index)
    for offset, rejected in judged.rejected:
        assert isinstance(rejected.reason, R)
        assert_deadletter_is_bounded_utf8(offset, rejected, sequence[offset].value)
        key = (offset, rejected.batch_index)
        assert key not in seen, f"element {key} judged twice"
        seen[key] = rejected
    first_sightings: set[str] = set()
    duplicates = 0
    for candidate in judged.candidates:
        offset_text, _, index_text = candidate.position.partition(":")
        key = (int(offset_text), int(index_text) if index_text else None)
        assert key not in seen, f"element {key} judged twice"
        seen[key] = candidate
        # Dedup (Redis, first position wins) runs after judge: a repeat is a duplicate.
        duplicates += candidate.event_id in first_sightings
        first_sightings.add(candidate.event_id)
    counted = len(judged.candidates) - duplicates
    assert counted + duplicates + len(judged.rejected) == len(seen)

    unread = {offset for offset, message in enumerate(sequence) if has_unreadable(message)
              and [k for k in seen if k[0] == offset] == [(offset, None)]}
    expected = oracle(sequence, unread)
    for offset, (message, outcomes) in enumerate(zip(sequence, expected, strict=True)):
        keys = sorted((k for k in seen if k[0] == offset), key=lambda k: k[1] or 0)
        if message.whole is not None:
            if message.whole.what == "random_bytes":  # may even parse: '[0,1]' is two
                assert keys, "a message judged not at all"
                continue
            assert [k[1] for k in keys] == [None], (message.whole.what, keys)
            got = seen[keys[0]]
            assert isinstance(got, Rejected) and got.reason in message.whole.reasons, (
                message.whole.what, got, message.value[:200])
            continue
        indices = list(range(len(outcomes))) if message.batched else [None]
        if offset in unread:
            got = seen[keys[0]]
            assert isinstance(got, Rejected) and got.reason in (R.BAD_JSON, R.WRONG_TYPE)
            continue
        assert [k[1] for k in keys] == indices, (keys, message.value[:300])
        for index, want in zip(indices, outcomes, strict=True):
            got = seen[(offset, index)]
            element = message.elements[index or 0]
            context = (element.expected, element.text[:300])
            if want.reasons is not None:
                assert isinstance(got, Rejected) and got.reason in want.reasons, (got, *context)
                continue
            assert isinstance(got, Candidate), (got, *context)
            assert Decimal(got.cost_pico) / 10**12 == want.cost, context
            valid = want.valid
            assert valid is not None
            assert (got.event_id, got.ts_ms, got.dims) == (valid.event_id, valid.ts_ms, valid.dims)
            assert (got.input_tokens, got.output_tokens, got.cached_input_tokens) == (
                valid.input_tokens, valid.output_tokens, valid.cached)


DEFAULTS = {name: info.get_default(call_default_factory=True)
            for name, info in UsageEvent.model_fields.items() if not info.is_required()}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_the_hot_paths_dict_decoder_gives_the_models_verdicts(message: Message) -> None:
    """judge reads events as dicts (decode_usage_fields, for speed): every verdict must be the
    model's (decode_usage_message), and a valid event's dict must hold what the model holds,
    bar the defaults it leaves out."""
    fields, fields_batched = decode_usage_fields(message.value)
    models, models_batched = decode_usage_message(message.value)
    assert fields_batched == models_batched
    assert len(fields) == len(models)
    for got, want in zip(fields, models, strict=True):
        if isinstance(want, Rejected):
            assert got == want
        else:
            assert isinstance(got, dict), got
            assert {**DEFAULTS, **got} == dict(want)


def test_a_valid_batch_takes_the_fast_path() -> None:
    """Left-out defaults are absent only on the fast path (the model path fills them in): a
    valid batch, the common case, must not fall back to building models."""
    document = {"event_id": "e1", "ts": "2024-06-30T23:59:00Z", "model": "m",
                "input_tokens": 7, "output_tokens": 3, "cached_input_tokens": 2}
    entries, batched = decode_usage_fields(dumps([document, {**document, "event_id": "e2"}]))
    assert batched
    assert [sorted(e) for e in entries] == [sorted(document)] * 2  # type: ignore[arg-type]


def test_counted_candidates_carry_the_event_as_sent() -> None:
    """Dimensions, tokens and time of a counted event: what the producer wrote, exactly."""
    labels = {"team": "🚀 search", "project": "p", "app": "a", "namespace": "ns",
              "deployment": "label-dep", "cluster": "c"}
    document = {"event_id": "e1", "ts": "2024-06-30T23:59:00.123+05:30", "model": "m",
                "input_tokens": 7, "output_tokens": 3, "cached_input_tokens": 2,
                "labels": labels}
    ts_ms = NOW_MS - MINUTE_MS + 123 - 330 * MINUTE_MS
    (candidate,) = judge([(0, dumps(document))], PartitionClock(), PRICES, RULES, NOW_MS).candidates
    assert (candidate.event_id, candidate.position, candidate.ts_ms) == ("e1", "0", ts_ms)
    assert candidate.dims == ("m", "🚀 search", "p", "a", "ns", "label-dep", "c")
    assert (candidate.input_tokens, candidate.output_tokens, candidate.cached_input_tokens) == (
        7, 3, 2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(M_CHANGE_MS - 40 * DAY_MS, M_CHANGE_MS + 40 * DAY_MS),
                          st.integers(0, 10_000), st.integers(0, 10_000)),
                min_size=1, max_size=30))
def test_backfill_of_old_data_is_priced_at_the_price_in_force_at_its_time(
    rows: list[tuple[int, int, int]],
) -> None:
    """A fresh partition replaying months-old events, in event-time order, accepts them all
    and prices each at the price in force at its own time, across a price change."""
    rows.sort()
    sequence = [
        {"event_id": f"old-{i}", "ts": iso_ms(ts), "model": "m", "input_tokens": tin,
         "output_tokens": tout}
        for i, (ts, tin, tout) in enumerate(rows)
    ]
    value = orjson.dumps(sequence)
    judged = judge([(0, value)], PartitionClock(), PRICES, RULES, NOW_MS)
    assert judged.rejected == []
    for candidate, (ts, tin, tout) in zip(judged.candidates, rows, strict=True):
        rates = dollars_per_token("m", ts, tin)
        assert rates is not None
        assert Decimal(candidate.cost_pico) / 10**12 == tin * rates[0] + tout * rates[1]


@pytest.mark.parametrize("size", [300_000, 900_000, 4_000_000])
@pytest.mark.parametrize("batched", [False, True])
def test_an_oversized_message_gives_a_bounded_deadletter(size: int, batched: bool) -> None:
    """A message near (or past) the broker's 1 MB limit still fits in one dead-letter record:
    the record says how much of the original it holds; the rest stays at its source offset."""
    document = {"event_id": "big", "ts": iso_ms(NOW_MS), "model": "m", "input_tokens": 1,
                "output_tokens": 1, "labels": {"team": "x" * size, "k" * size: "y"}}
    value = orjson.dumps([document] if batched else document)
    judged = judge([(0, value)], PartitionClock(), PRICES, RULES, NOW_MS)
    ((offset, rejected),) = judged.rejected
    assert rejected.reason == R.OVERSIZED_LABELS
    record = deadletter_record(rejected, "llm.usage.v1", 0, offset)
    assert len(record) <= DEADLETTER_RECORD_MAX_BYTES
    parsed = orjson.loads(record)
    original = base64.b64decode(parsed["original_b64"])
    assert (orjson.dumps(document) if batched else value).startswith(original)
    assert "truncated" in parsed["detail"] and str(len(original)) in parsed["detail"]
    assert len(parsed["detail"]) < 2000


def test_a_small_deadletter_keeps_the_original_whole() -> None:
    value = b'{"event_id": "x", "ts": '
    ((offset, rejected),) = judge([(5, value)], PartitionClock(), PRICES, RULES, NOW_MS).rejected
    parsed = orjson.loads(deadletter_record(rejected, "t", 1, offset))
    assert base64.b64decode(parsed["original_b64"]) == value
    assert "truncated" not in parsed["detail"]
