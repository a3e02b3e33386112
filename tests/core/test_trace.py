"""Trace reading without a broker: timestamps, column mapping, rotation, ids, errors.

The pure readers (``costflux.core.trace``) are fed in-memory lines; ``streams.trace`` reads the
same from files on disk.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import Any

import orjson
import pytest

from costflux.core.trace import (
    Assignment,
    ColumnMapping,
    TraceFormatError,
    csv_records,
    format_event_time,
    jsonl_records,
    parse_trace_time,
    trace_format_for,
    usage_events,
)
from costflux.schemas.usage import UsageEvent
from costflux.streams.trace import iter_usage_events
from tests.paths import AZURE_TRACE

AZURE_CSV = AZURE_TRACE
GPT4 = Assignment(model="gpt-4")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the pure readers, on lines in memory ---------------------------------------------------


def test_csv_lines_read_without_a_file() -> None:
    text = (
        "id,TIMESTAMP,ContextTokens,GeneratedTokens,note\r\n"
        '1,2024-05-01 12:00:00,10,2,"two\nlines"\r\n'
        "\r\n"
        "2,2024-05-01T12:00:01.25Z,11,3,x\r\n"
    )
    source = PurePath("mem.csv")

    records = list(csv_records(io.StringIO(text, newline=""), source, ColumnMapping()))
    events = list(usage_events(records, ColumnMapping(), Assignment(models=("a", "b")),
                               source=source, id_prefix="mem"))

    # Line numbers are the file's (the quoted newline makes row 1 end on line 3).
    assert [line for line, _ in records] == [3, 5]
    assert events == [
        {"event_id": "mem-0", "ts": "2024-05-01T12:00:00.000000Z", "model": "a",
         "input_tokens": 10, "output_tokens": 2, "labels": {}},
        {"event_id": "mem-1", "ts": "2024-05-01T12:00:01.250000Z", "model": "b",
         "input_tokens": 11, "output_tokens": 3, "labels": {}},
    ]


def test_jsonl_lines_read_without_a_file() -> None:
    lines = [b'{"TIMESTAMP": 1714564800, "ContextTokens": 5, "GeneratedTokens": 6}\n', b"  \n",
             b'{"TIMESTAMP": "2024-05-01T12:00:00Z", "ContextTokens": "7", '
             b'"GeneratedTokens": 8.0}\n']
    source = PurePath("mem.jsonl")

    events = list(usage_events(jsonl_records(lines, source), ColumnMapping(), GPT4,
                               source=source, id_prefix="p"))

    assert [(e["event_id"], e["ts"], e["input_tokens"], e["output_tokens"]) for e in events] == [
        ("p-0", "2024-05-01T12:00:00.000000Z", 5, 6),
        ("p-1", "2024-05-01T12:00:00.000000Z", 7, 8),
    ]


def test_usage_events_read_no_further_than_the_limit() -> None:
    read: list[int] = []

    def records() -> Iterator[tuple[int, dict[str, Any]]]:
        for line in range(1, 100):
            read.append(line)
            yield line, {"TIMESTAMP": line, "ContextTokens": 1, "GeneratedTokens": 1}

    events = list(usage_events(records(), ColumnMapping(), GPT4,
                               source=PurePath("x"), id_prefix="x", limit=3))

    assert [e["ts"] for e in events] == [format_event_time(datetime.fromtimestamp(s, UTC))
                                         for s in (1, 2, 3)]
    assert read == [1, 2, 3]
    with pytest.raises(ValueError, match="non-negative"):
        list(usage_events([], ColumnMapping(), GPT4, source=PurePath("x"), id_prefix="x",
                          limit=-1))


@pytest.mark.parametrize(
    ("lines", "line", "reason"),
    [
        ([b"[1, 2]\n"], 1, "JSON object"),
        ([b"\n", b"{nope\n"], 2, "not valid JSON"),
    ],
)
def test_jsonl_lines_that_are_not_objects(lines: list[bytes], line: int, reason: str) -> None:
    with pytest.raises(TraceFormatError, match=reason) as caught:
        list(jsonl_records(lines, PurePath("m.jsonl")))
    assert (caught.value.path, caught.value.line) == (PurePath("m.jsonl"), line)


def test_formats_from_suffixes() -> None:
    assert [trace_format_for(PurePath(n)) for n in ("a.csv", "b.JSONL", "c.ndjson")] == [
        "csv", "jsonl", "jsonl"]
    with pytest.raises(ValueError, match="csv or jsonl"):
        trace_format_for(PurePath("d.parquet"))


def test_a_bom_before_the_header_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    trace = tmp_path / "bom.csv"
    trace.write_bytes(b"\xef\xbb\xbfTIMESTAMP,ContextTokens,GeneratedTokens\n1,2,3\n")

    [event] = iter_usage_events(trace, ColumnMapping(), GPT4)

    assert (event["ts"], event["input_tokens"]) == ("1970-01-01T00:00:01.000000Z", 2)


def test_limit_zero_opens_nothing(tmp_path: Path) -> None:
    assert list(iter_usage_events(tmp_path / "absent.csv", ColumnMapping(), GPT4, limit=0)) == []


def open_paths() -> list[str]:
    """What this process has open, by path (Linux)."""
    fds = Path("/proc/self/fd")
    return [os.readlink(fds / fd) for fd in os.listdir(fds) if (fds / fd).is_symlink()]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_the_file_is_open_only_while_read(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,1,1\n2,2,2\n")
    events = iter_usage_events(trace, ColumnMapping(), GPT4)
    assert str(trace) not in open_paths()
    next(events)
    assert str(trace) in open_paths()

    events.close()

    assert str(trace) not in open_paths()


# --- parsing -------------------------------------------------------------------------------


def test_csv_rows_become_usage_events_with_azure_defaults(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "conv.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n",
    )

    events = list(iter_usage_events(trace, ColumnMapping(), GPT4))

    assert events == [
        {
            "event_id": "conv-0",
            "ts": "2023-11-16T18:15:46.680590Z",
            "model": "gpt-4",
            "input_tokens": 374,
            "output_tokens": 44,
            "labels": {},
        },
        {
            "event_id": "conv-1",
            "ts": "2023-11-16T18:15:50.995169Z",
            "model": "gpt-4",
            "input_tokens": 396,
            "output_tokens": 109,
            "labels": {},
        },
    ]
    for event in events:
        UsageEvent.model_validate(event)


def test_jsonl_with_custom_columns_epoch_times_and_optional_fields(tmp_path: Path) -> None:
    lines = [
        {"t": 1714564800, "p": 10, "c": 3, "k": 2, "m": "claude-3", "id": "a", "lat": 12.5},
        {"t": 1714564800.25, "p": "11", "c": "4", "m": "", "id": 7},
        {"t": "1714564801.5", "p": 12, "c": 5, "k": None, "lat": "", "id": "c"},
    ]
    text = "\n".join(orjson.dumps(line).decode() for line in lines[:2]) + "\n\n"
    trace = write(tmp_path / "calls.jsonl", text + orjson.dumps(lines[2]).decode() + "\n")
    mapping = ColumnMapping.parse("ts=t,input=p,output=c,cached=k,model=m,event_id=id,latency=lat")

    events = list(iter_usage_events(trace, mapping, Assignment(models=("x", "y", "z"))))

    assert [e["ts"] for e in events] == [
        "2024-05-01T12:00:00.000000Z",
        "2024-05-01T12:00:00.250000Z",
        "2024-05-01T12:00:01.500000Z",
    ]
    # The row's own model wins; an empty or absent one falls back to the rotation by row index.
    assert [e["model"] for e in events] == ["claude-3", "y", "z"]
    assert [e["event_id"] for e in events] == ["a", "7", "c"]
    assert events[0]["cached_input_tokens"] == 2 and "cached_input_tokens" not in events[1]
    assert events[0]["latency_ms"] == 12.5 and "latency_ms" not in events[2]
    assert [e["input_tokens"] for e in events] == [10, 11, 12]


def test_jsonl_missing_event_id_column_value_is_an_error(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.jsonl", '{"ts": 1, "i": 1, "o": 1}\n')
    mapping = ColumnMapping(ts="ts", input_tokens="i", output_tokens="o", event_id="id")

    with pytest.raises(TraceFormatError) as caught:
        list(iter_usage_events(trace, mapping, GPT4))

    assert (caught.value.line, caught.value.column) == (1, "id")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # Naive: the Azure trace's own shape, 7 fractional digits, read as UTC.
        ("2023-11-16 18:15:46.6805900", "2023-11-16T18:15:46.680590Z"),
        # Digits past the microsecond are dropped, never rounded up.
        ("2023-11-16 18:15:46.6805909", "2023-11-16T18:15:46.680590Z"),
        ("2023-11-16T18:15:46", "2023-11-16T18:15:46.000000Z"),
        ("2023-11-16 18:15:46.5", "2023-11-16T18:15:46.500000Z"),
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01T14:00:00.123+02:00", "2024-05-01T12:00:00.123000Z"),
        ("2024-05-01T06:30:00-05:30", "2024-05-01T12:00:00.000000Z"),
        ("2024-05-01T12:00:00.123456789Z", "2024-05-01T12:00:00.123456Z"),
        (1714564800, "2024-05-01T12:00:00.000000Z"),
        (1714564800.5, "2024-05-01T12:00:00.500000Z"),
        # Read from the float's decimal text, so .680590 does not come out as .680589.
        (1700158546.68059, "2023-11-16T18:15:46.680590Z"),
        ("1700158546.6805909", "2023-11-16T18:15:46.680590Z"),
        ("0", "1970-01-01T00:00:00.000000Z"),
    ],
)
def test_timestamps_naive_offset_and_epoch(raw: object, expected: str) -> None:
    assert format_event_time(parse_trace_time(raw)) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "yesterday",
        "2023-13-01 00:00:00",
        "2023-11-16 25:00:00",
        "1e999999",
        True,
        None,
        float("nan"),
        "2023-11-16 18:15:46.1234567890",
    ],
)
def test_bad_timestamps_are_rejected(raw: object) -> None:
    with pytest.raises(ValueError):
        parse_trace_time(raw)


# --- assignment and ids ----------------------------------------------------------------------


def test_models_and_labels_rotate_independently_by_row_index(tmp_path: Path) -> None:
    rows = 14
    trace = write(
        tmp_path / "t.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(f"2024-05-01 12:00:{i:02d},{i},{i}\n" for i in range(rows)),
    )
    models = ("llama-2-70b", "llama-2-7b", "gpt-4")
    teams = ("search", "ads", "chat")
    projects = ("alpha", "beta")
    assignment = Assignment(
        models=models, labels={"team": teams, "project": projects, "env": "prod"}
    )

    events = list(iter_usage_events(trace, ColumnMapping(), assignment))

    assert len(events) == rows
    for i, event in enumerate(events):
        assert event["model"] == models[i % 3]
        assert event["labels"] == {
            "team": teams[i % 3],
            "project": projects[i % 2],
            "env": "prod",
        }


def test_assignment_is_validated_and_frozen() -> None:
    with pytest.raises(ValueError, match="not both"):
        Assignment(model="gpt-4", models=("a",))
    with pytest.raises(ValueError):
        Assignment(labels={"team": ()})
    with pytest.raises(ValueError):
        Assignment(models=("a", ""))
    labels: dict[str, str | tuple[str, ...]] = {"team": ("a", "b")}
    assignment = Assignment(model="m", labels=labels)
    labels["team"] = "changed"
    assert assignment.labels_for(1) == {"team": "b"}


def test_event_ids_are_deterministic_row_indexes(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "day1.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-01 12:00:00,1,1\n"
        "\n"
        "2024-05-01 12:00:01,2,2\n"
        "2024-05-01 12:00:02,3,3\n",
    )

    first = list(iter_usage_events(trace, ColumnMapping(), GPT4))
    second = list(iter_usage_events(trace, ColumnMapping(), GPT4))
    prefixed = list(iter_usage_events(trace, ColumnMapping(), GPT4, id_prefix="run7", limit=2))

    # Blank lines are not rows, so they do not shift the ids.
    assert [e["event_id"] for e in first] == ["day1-0", "day1-1", "day1-2"]
    assert first == second
    assert [e["event_id"] for e in prefixed] == ["run7-0", "run7-1"]


def test_limit_zero_reads_nothing(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,x,1\n")
    assert list(iter_usage_events(trace, ColumnMapping(), GPT4, limit=0)) == []


# --- errors --------------------------------------------------------------------------------


def test_bad_csv_row_names_file_line_and_column(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "bad.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2024-05-01 12:00:00,1,1\n"
        "2024-05-01 12:00:01,2,2\n"
        "2024-05-01 12:00:02,lots,3\n",
    )
    events = iter_usage_events(trace, ColumnMapping(), GPT4)
    assert len([next(events), next(events)]) == 2

    with pytest.raises(TraceFormatError) as caught:
        next(events)

    error = caught.value
    assert (error.path, error.line, error.column) == (trace, 4, "ContextTokens")
    assert str(trace) in str(error) and "line 4" in str(error) and "lots" in str(error)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("TIMESTAMP,ContextTokens\n2024-05-01 12:00:00,1\n", 1, "GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-01 12:00:00,1\n", 2, None),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nnot-a-time,1,1\n", 2, "TIMESTAMP"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-01 12:00:00,1,-3\n",
            2,
            "GeneratedTokens",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-01 12:00:00,,1\n", 2, "ContextTokens"),
        ("", 1, None),
    ],
)
def test_csv_format_errors(tmp_path: Path, text: str, line: int, column: str | None) -> None:
    trace = write(tmp_path / "t.csv", text)

    with pytest.raises(TraceFormatError) as caught:
        list(iter_usage_events(trace, ColumnMapping(), GPT4))

    assert (caught.value.line, caught.value.column) == (line, column)


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    trace = write(
        tmp_path / "t.jsonl",
        '{"TIMESTAMP": 1, "ContextTokens": 1, "GeneratedTokens": 1}\n\n{"TIMESTAMP": 2,\n',
    )

    with pytest.raises(TraceFormatError, match="line 3") as caught:
        list(iter_usage_events(trace, ColumnMapping(), GPT4))

    assert caught.value.line == 3


def test_no_model_anywhere_is_an_error(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,1,1\n")
    with pytest.raises(TraceFormatError, match="no model"):
        list(iter_usage_events(trace, ColumnMapping(), Assignment()))


def test_unknown_suffix_needs_an_explicit_format(tmp_path: Path) -> None:
    trace = write(tmp_path / "t.txt", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,1,1\n")
    with pytest.raises(ValueError, match="format"):
        list(iter_usage_events(trace, ColumnMapping(), GPT4))
    assert len(list(iter_usage_events(trace, ColumnMapping(), GPT4, file_format="csv"))) == 1


def test_column_spec_parsing() -> None:
    assert ColumnMapping.parse("ts=time, input=prompt ,output=completion") == ColumnMapping(
        ts="time", input_tokens="prompt", output_tokens="completion"
    )
    assert ColumnMapping.parse("cached=c").ts == "TIMESTAMP"
    for bad in ("tokens=x", "ts", "ts=a,ts=b", "ts="):
        with pytest.raises(ValueError):
            ColumnMapping.parse(bad)


# --- the bundled Azure trace -------------------------------------------------------------------


def test_first_hundred_azure_rows_match_the_file() -> None:
    with AZURE_CSV.open(newline="") as handle:
        rows = [row for _, row in zip(range(100), csv.DictReader(handle), strict=False)]
    assignment = Assignment(models=("llama-2-70b", "llama-2-7b", "gpt-4"))

    events = list(iter_usage_events(AZURE_CSV, ColumnMapping(), assignment, limit=100))

    assert len(events) == 100
    for i in (0, 1, 2, 57, 99):
        naive = datetime.strptime(rows[i]["TIMESTAMP"][:26], "%Y-%m-%d %H:%M:%S.%f")
        assert events[i]["ts"] == naive.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        assert events[i]["input_tokens"] == int(rows[i]["ContextTokens"])
        assert events[i]["output_tokens"] == int(rows[i]["GeneratedTokens"])
        assert events[i]["event_id"] == f"AzureLLMInferenceTrace_conv-{i}"
    assert events[0]["ts"] == "2023-11-16T18:15:46.680590Z"
    assert (events[0]["input_tokens"], events[0]["output_tokens"]) == (374, 44)
    for event in events:
        UsageEvent.model_validate(event)


