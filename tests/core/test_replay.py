"""Trace replay without a broker: parsing, timestamps, rotation, ids, errors, pacing, CLI."""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas.usage import UsageEvent
from streams.replay import (
    Assignment,
    ColumnMapping,
    TraceFormatError,
    add_replay_arguments,
    format_event_time,
    iter_usage_events,
    parse_trace_time,
    replay,
    run_replay,
)
from tests.paths import AZURE_TRACE

AZURE_CSV = AZURE_TRACE
GPT4 = Assignment(model="gpt-4")


class RecordingSink:
    """Collects what replay sends, and when, on a clock the test controls or the real one."""

    def __init__(self, clock: FakeClock | None = None, send_cost: float = 0.0) -> None:
        self.events: list[Mapping[str, Any]] = []
        self.sent_at: list[float] = []
        self.pushes = 0
        self._clock = clock
        self._send_cost = send_cost

    def send(self, event: Mapping[str, Any]) -> None:
        if self._clock is not None:
            self.sent_at.append(self._clock())
            self._clock.now += self._send_cost
        self.events.append(event)

    def send_partial_batch(self) -> None:
        self.pushes += 1


class FakeClock:
    """A monotonic clock that moves only when slept on or told to."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def synthetic_events(offsets_s: list[float]) -> list[dict[str, Any]]:
    start = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [
        {
            "event_id": f"e{i}",
            "ts": format_event_time(start + timedelta(seconds=offset)),
            "model": "gpt-4",
            "input_tokens": 1,
            "output_tokens": 1,
        }
        for i, offset in enumerate(offsets_s)
    ]


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


# --- pacing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("speed", [1.0, 3.0])
def test_paced_replay_takes_event_span_over_speed(speed: float) -> None:
    wall_target = 0.3
    offsets = [wall_target * speed * k / 6 for k in range(7)]
    sink = RecordingSink()

    started = time.monotonic()
    stats = replay(synthetic_events(offsets), sink, speed=speed, progress=False)
    elapsed = time.monotonic() - started

    assert len(sink.events) == stats.count == 7
    assert wall_target - 0.005 <= elapsed < wall_target + 0.25
    assert stats.wall_seconds == pytest.approx(elapsed, abs=0.05)
    assert stats.last_event_time is not None and stats.first_event_time is not None
    span = stats.last_event_time - stats.first_event_time
    assert span.total_seconds() == pytest.approx(wall_target * speed)


def test_speed_zero_never_sleeps() -> None:
    clock = FakeClock()
    sink = RecordingSink()

    stats = replay(
        synthetic_events([0, 5, 60, 3600]), sink, speed=0, clock=clock, sleep=clock.sleep
    )

    assert clock.sleeps == [] and sink.pushes == 0
    assert stats.count == 4
    assert stats.first_event_time == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert stats.last_event_time == datetime(2024, 5, 1, 13, 0, tzinfo=UTC)


def test_pacing_is_anchored_so_send_time_does_not_accumulate() -> None:
    clock = FakeClock()
    # Each send costs 2 ms against 10 ms gaps: a sleep-the-gap loop would drift 2 ms per event.
    sink = RecordingSink(clock, send_cost=0.002)

    replay(
        synthetic_events([k * 0.010 for k in range(50)]),
        sink,
        speed=1.0,
        clock=clock,
        sleep=clock.sleep,
    )

    start = sink.sent_at[0]
    for k, sent in enumerate(sink.sent_at):
        assert sent - start == pytest.approx(k * 0.010, abs=1e-9)


def test_pacing_sleeps_only_when_ahead() -> None:
    clock = FakeClock()
    sink = RecordingSink(clock, send_cost=0.020)

    replay(
        synthetic_events([k * 0.010 for k in range(20)]),
        sink,
        speed=1.0,
        clock=clock,
        sleep=clock.sleep,
    )

    assert clock.sleeps == []


def test_out_of_order_event_is_sent_at_once() -> None:
    clock = FakeClock()
    sink = RecordingSink(clock)

    replay(synthetic_events([0, 10, 4, 12]), sink, speed=2.0, clock=clock, sleep=clock.sleep)

    assert [round(t - sink.sent_at[0], 6) for t in sink.sent_at] == [0, 5, 5, 6]


def test_buffered_events_are_pushed_before_a_long_sleep() -> None:
    clock = FakeClock()
    sink = RecordingSink(clock)

    replay(synthetic_events([0, 1, 2]), sink, speed=1.0, clock=clock, sleep=clock.sleep)

    assert sink.pushes == 2 and clock.sleeps == [1.0, 1.0]


def test_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    sink = RecordingSink()
    stats = replay(synthetic_events([0, 0.001]), sink, speed=0, progress=True, total=2)
    assert stats.count == 2
    assert capsys.readouterr().out == ""


def test_empty_replay_and_bad_speed() -> None:
    stats = replay([], RecordingSink(), speed=0)
    assert (stats.count, stats.first_event_time, stats.last_event_time) == (0, None, None)
    with pytest.raises(ValueError):
        replay([], RecordingSink(), speed=-1)


# --- CLI glue ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="costflux replay")
    add_replay_arguments(parser)
    return parser.parse_args(argv)


def test_arguments_parse_into_mapping_and_assignment() -> None:
    args = parse(
        [
            "trace.csv",
            "--columns",
            "ts=time,input=p,output=c,cached=k",
            "--models",
            "a,b,c",
            "--label",
            "team=x,y",
            "--label",
            "env=prod",
            "--speed",
            "60",
            "--limit",
            "10",
            "--events-per-message",
            "1",
            "--no-progress",
        ]
    )
    assert args.file == Path("trace.csv")
    assert args.columns == ColumnMapping("time", "p", "c", cached_input_tokens="k")
    assert args.models == ("a", "b", "c") and args.model is None
    assert args.label == [("team", ("x", "y")), ("env", "prod")]
    assert (args.speed, args.limit, args.events_per_message, args.no_progress) == (
        60.0,
        10,
        1,
        True,
    )
    defaults = parse(["t.csv"])
    assert (defaults.speed, defaults.events_per_message, defaults.label) == (0.0, 100, None)


@pytest.mark.parametrize(
    "argv",
    [
        ["t.csv", "--model", "a", "--models", "b,c"],
        ["t.csv", "--speed", "-1"],
        ["t.csv", "--events-per-message", "0"],
        ["t.csv", "--columns", "bogus=1"],
        ["t.csv", "--label", "team"],
        ["t.csv", "--format", "parquet"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse(argv)
    assert caught.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{missing}", "--model", "m"], "No such file"),
        (["{trace}"], "--model"),
        (["{bad}", "--model", "m"], "line 2"),
        (["{trace}", "--model", "m", "--label", "a=1", "--label", "a=2"], "twice"),
    ],
)
def test_run_replay_reports_input_errors_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    paths = {
        "missing": str(tmp_path / "missing.csv"),
        "trace": str(write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,1,1\n")),
        "bad": str(write(tmp_path / "b.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,x,1\n")),
    }
    args = parse([part.format(**paths) for part in argv])

    # No broker listens on port 9: reaching the producer would not give these messages.
    code = run_replay(args, {"bootstrap.servers": "127.0.0.1:9"}, "llm.usage.v1")

    assert code == 2
    assert message in capsys.readouterr().err


def test_run_replay_rejects_a_bad_producer_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = write(tmp_path / "t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n1,1,1\n")
    args = parse([str(trace), "--model", "m", "--no-progress"])

    code = run_replay(args, {"bootstrap.servers": "127.0.0.1:9", "no.such.option": "1"}, "t")

    assert code == 2
    assert "no.such.option" in capsys.readouterr().err
