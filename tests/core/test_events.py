"""Decoding usage messages: one event or a batch, each bad element rejected with its reason."""

from __future__ import annotations

import calendar
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.core.events import Rejected, decode_usage_message
from costflux.schemas.deadletter import DeadLetterReason as R
from costflux.schemas.usage import UsageEvent

VALID: dict[str, Any] = {
    "event_id": "req-1",
    "ts": "2024-05-01T12:00:00Z",
    "model": "gpt-4",
    "input_tokens": 100,
    "output_tokens": 20,
}
NOON_MAY_1_2024_MS = calendar.timegm((2024, 5, 1, 12, 0, 0, 0, 0, 0)) * 1000


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def decode_one(document: object) -> UsageEvent | Rejected:
    entries, batched = decode_usage_message(encode(document))
    assert batched is False
    assert len(entries) == 1
    return entries[0]


def with_(**changes: Any) -> dict[str, Any]:
    event = {**VALID, **changes}
    return {k: v for k, v in event.items() if v is not ...}


def test_valid_event_decodes_with_defaults() -> None:
    event = decode_one(with_(labels={"team": "search"}, cached_input_tokens=40))
    assert isinstance(event, UsageEvent)
    assert event.ts_ms == NOON_MAY_1_2024_MS
    assert (event.event_id, event.model) == ("req-1", "gpt-4")
    assert (event.input_tokens, event.output_tokens, event.cached_input_tokens) == (100, 20, 40)
    assert event.labels == {"team": "search"}
    assert event.status == "ok"
    assert decode_one(VALID).cached_input_tokens == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        ("2024-05-01T12:00:00Z", NOON_MAY_1_2024_MS),
        ("2024-05-01T12:00:00+00:00", NOON_MAY_1_2024_MS),
        ("2024-05-01T14:00:00+02:00", NOON_MAY_1_2024_MS),
        ("2024-05-01T06:30:00-05:30", NOON_MAY_1_2024_MS),
        ("2024-05-01T12:00:00.250Z", NOON_MAY_1_2024_MS + 250),
        ("2024-05-01T12:00:00.999999Z", NOON_MAY_1_2024_MS + 999),  # floor, never round up
        (1714564800, NOON_MAY_1_2024_MS),
        (1714564800.25, NOON_MAY_1_2024_MS + 250),
        (1714564800.0, NOON_MAY_1_2024_MS),
        (0, 0),
    ],
)
def test_timestamp_forms_give_the_right_epoch_ms(ts: object, expected_ms: int) -> None:
    event = decode_one(with_(ts=ts))
    assert isinstance(event, UsageEvent), event
    assert event.ts_ms == expected_ms


@given(
    st.integers(min_value=14 * 3_600_000, max_value=4 * 10**12),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_any_rfc3339_offset_gives_the_same_instant(epoch_ms: int, offset_min: int) -> None:
    zone = timezone(timedelta(minutes=offset_min))
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=epoch_ms)
    text = moment.astimezone(zone).isoformat(timespec="milliseconds")
    event = decode_one(with_(ts=text))
    assert isinstance(event, UsageEvent), (text, event)
    assert event.ts_ms == epoch_ms


@given(st.integers(min_value=0, max_value=2 * 10**10))
def test_integer_epoch_seconds_give_exact_ms(seconds: int) -> None:
    event = decode_one(with_(ts=seconds))
    assert isinstance(event, UsageEvent)
    assert event.ts_ms == seconds * 1000


@given(st.integers(min_value=2 * 10**10 + 1, max_value=10**14))
def test_epoch_numbers_beyond_2e10_are_read_as_milliseconds(millis: int) -> None:
    # The documented rule (pydantic's): no one means the year 2603 in seconds.
    event = decode_one(with_(ts=millis))
    assert isinstance(event, UsageEvent)
    assert event.ts_ms == millis


# --- reason codes --------------------------------------------------------------------------

TOO_MANY_LABELS = {f"k{i}": "v" for i in range(33)}


@pytest.mark.parametrize(
    ("raw", "reason", "names"),
    [
        pytest.param(b'{"event_id": "r1", "ts": ', R.BAD_JSON, "", id="truncated"),
        pytest.param(b"\xff\xfe not utf-8", R.BAD_JSON, "", id="not-utf8"),
        pytest.param(b"", R.BAD_JSON, "empty", id="empty-message"),
        pytest.param(
            json.dumps(with_(latency_ms=float("nan"))).encode(),
            R.NOT_FINITE,
            "NaN",
            id="nan-from-json.dumps",
        ),
        pytest.param(
            json.dumps(with_(gpu_seconds=float("inf"))).encode(),
            R.NOT_FINITE,
            "Infinity",
            id="infinity-from-json.dumps",
        ),
        pytest.param(b"42", R.NOT_AN_OBJECT, "int", id="number"),
        pytest.param(b'"event"', R.NOT_AN_OBJECT, "str", id="string"),
        pytest.param(b"null", R.NOT_AN_OBJECT, "", id="null"),
        pytest.param(b"[]", R.NOT_AN_OBJECT, "empty batch", id="empty-batch"),
        pytest.param(
            encode(with_(input_tokens=..., input_token=100)),
            R.UNKNOWN_FIELD,
            "input_token",
            id="typo-input_token",
        ),
        pytest.param(encode(with_(model=...)), R.MISSING_FIELD, "model", id="missing-model"),
        pytest.param(encode(with_(ts=...)), R.MISSING_FIELD, "ts", id="missing-ts"),
        pytest.param(
            encode(with_(input_tokens="100")), R.WRONG_TYPE, "input_tokens", id="string-count"
        ),
        pytest.param(
            encode(with_(output_tokens=20.0)), R.WRONG_TYPE, "output_tokens", id="float-count"
        ),
        pytest.param(
            encode(with_(input_tokens=True)), R.WRONG_TYPE, "input_tokens", id="bool-count"
        ),
        pytest.param(encode(with_(status="maybe")), R.WRONG_TYPE, "status", id="bad-status"),
        pytest.param(
            encode(with_(labels={"team": 7})), R.WRONG_TYPE, "labels.team", id="label-not-str"
        ),
        pytest.param(
            encode(with_(output_tokens=-1)), R.NEGATIVE_VALUE, "output_tokens", id="negative"
        ),
        pytest.param(
            encode(with_(latency_ms=-0.5)), R.NEGATIVE_VALUE, "latency_ms", id="neg-latency"
        ),
        pytest.param(
            encode(with_(input_tokens=10_000_001)),
            R.ABSURD_VALUE,
            "input_tokens",
            id="absurd-tokens",
        ),
        pytest.param(encode(with_(ts="2024-05-01T12:00:00")), R.BAD_TIMESTAMP, "ts", id="naive-ts"),
        pytest.param(encode(with_(ts="yesterday")), R.BAD_TIMESTAMP, "ts", id="garbage-ts"),
        pytest.param(encode(with_(ts=True)), R.BAD_TIMESTAMP, "ts", id="bool-ts"),
        pytest.param(encode(with_(ts=None)), R.BAD_TIMESTAMP, "ts", id="null-ts"),
        pytest.param(
            encode(with_(labels={"team": "x" * 257})),
            R.OVERSIZED_LABELS,
            "labels",
            id="label-value-257",
        ),
        pytest.param(
            encode(with_(labels={"k" * 129: "v"})),
            R.OVERSIZED_LABELS,
            "labels",
            id="label-key-129",
        ),
        pytest.param(
            encode(with_(labels=TOO_MANY_LABELS)),
            R.OVERSIZED_LABELS,
            "labels",
            id="33-labels",
        ),
        pytest.param(
            encode(with_(input_tokens=10, cached_input_tokens=11)),
            R.INVALID_VALUE,
            "cached_input_tokens",
            id="cached-exceeds-input",
        ),
    ],
)
def test_each_bad_input_gets_its_reason_and_a_detail_naming_the_field(
    raw: bytes, reason: R, names: str
) -> None:
    entries, _ = decode_usage_message(raw)
    assert len(entries) == 1
    verdict = entries[0]
    assert isinstance(verdict, Rejected), verdict
    assert verdict.reason is reason, verdict.detail
    assert names in verdict.detail
    assert verdict.batch_index is None
    assert verdict.original == raw


def test_none_message_is_bad_json() -> None:
    entries, batched = decode_usage_message(None)
    assert batched is False
    assert len(entries) == 1 and isinstance(entries[0], Rejected)
    assert entries[0].reason is R.BAD_JSON


@pytest.mark.parametrize(
    "event",
    [
        with_(input_tokens=10_000_000, output_tokens=0, cached_input_tokens=10_000_000),
        with_(labels={f"k{i}": "v" * 256 for i in range(32)}),
        with_(labels={"k" * 128: ""}),
        with_(input_tokens=0, output_tokens=0, latency_ms=0, gpu_seconds=0.0),
    ],
    ids=["max-tokens", "32-labels-256-chars", "key-128", "zeros"],
)
def test_limits_are_inclusive(event: dict[str, Any]) -> None:
    assert isinstance(decode_one(event), UsageEvent)


# --- batches -------------------------------------------------------------------------------


def test_batch_rejects_only_the_bad_elements_with_their_index() -> None:
    batch = [
        with_(event_id="a"),
        with_(event_id="b", input_tokens=-1),
        "not an object",
        with_(event_id="d", input_token=5),
        with_(event_id="e", ts=1714564801),
    ]
    raw = encode(batch)
    entries, batched = decode_usage_message(raw)
    assert batched is True
    assert len(entries) == len(batch)
    a, b, c, d, e = entries
    assert isinstance(a, UsageEvent) and a.event_id == "a"
    assert isinstance(e, UsageEvent) and e.event_id == "e"
    assert e.ts_ms == NOON_MAY_1_2024_MS + 1000
    expected = [(b, 1, R.NEGATIVE_VALUE), (c, 2, R.NOT_AN_OBJECT), (d, 3, R.UNKNOWN_FIELD)]
    for verdict, index, reason in expected:
        assert isinstance(verdict, Rejected)
        assert (verdict.batch_index, verdict.reason) == (index, reason)
        # the element itself, not the whole batch, goes to the dead-letter topic
        assert orjson.loads(verdict.original) == batch[index]


@given(
    st.lists(
        st.sampled_from(
            [
                ("ok", with_()),
                ("bad", with_(input_tokens="1")),
                ("bad", with_(ts="2024-05-01")),
                ("bad", [1, 2]),
                ("bad", with_(extra=1)),
                ("bad", with_(output_tokens=...)),
            ]
        ),
        min_size=1,
        max_size=12,
    )
)
def test_batch_verdicts_are_per_element_and_in_order(
    elements: list[tuple[str, object]],
) -> None:
    entries, batched = decode_usage_message(encode([document for _, document in elements]))
    assert batched is True
    assert len(entries) == len(elements)
    for index, ((kind, _), entry) in enumerate(zip(elements, entries, strict=True)):
        if kind == "ok":
            assert isinstance(entry, UsageEvent)
        else:
            assert isinstance(entry, Rejected)
            assert entry.batch_index == index


def test_nan_in_one_batch_element_rejects_only_that_element() -> None:
    raw = json.dumps([with_(event_id="a"), with_(event_id="b", latency_ms=float("nan"))])
    entries, batched = decode_usage_message(raw.encode())
    assert batched is True
    assert len(entries) == 2
    assert isinstance(entries[0], UsageEvent)
    assert isinstance(entries[1], Rejected)
    assert (entries[1].reason, entries[1].batch_index) == (R.NOT_FINITE, 1)


@pytest.mark.parametrize(
    "ts",
    [1e20, "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", -1.5],
    ids=["1e20", "year-10000-after-utc", "year-0-after-utc", "before-1970"],
)
def test_out_of_range_timestamp_is_rejected_not_raised(ts: object) -> None:
    entries, _ = decode_usage_message(encode(with_(ts=ts)))
    assert len(entries) == 1
    assert isinstance(entries[0], Rejected)
    assert entries[0].reason is R.BAD_TIMESTAMP


def test_token_count_beyond_64_bits_is_absurd_not_wrong_type() -> None:
    verdict = decode_one(with_(input_tokens=2**64))
    assert isinstance(verdict, Rejected)
    assert verdict.reason is R.ABSURD_VALUE
