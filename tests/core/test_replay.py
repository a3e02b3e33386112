"""``costflux replay`` without a broker: its arguments, input errors, progress bar and facade."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from costflux.cli.replay import add_replay_arguments, replay, run_replay
from costflux.core.trace import ColumnMapping
from costflux.streams.pacing import ListSink


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def events_at(*seconds: int) -> list[Mapping[str, Any]]:
    return [{"event_id": f"e{s}", "ts": f"2024-05-01T12:00:{s:02d}Z"} for s in seconds]


# --- the replay command ----------------------------------------------------------------------


def test_replay_paces_into_the_sink() -> None:
    sink = ListSink()

    stats = replay(events_at(0, 5), sink, speed=0)

    assert sink.events == events_at(0, 5)
    assert (stats.count, stats.first_event_time, stats.last_event_time) == (
        2, datetime(2024, 5, 1, 12, 0, tzinfo=UTC), datetime(2024, 5, 1, 12, 0, 5, tzinfo=UTC))


def test_progress_bar_runs(capsys: pytest.CaptureFixture[str]) -> None:
    sink = ListSink()
    stats = replay(events_at(0, 1), sink, speed=0, progress=True, total=2)
    assert stats.count == 2
    assert capsys.readouterr().out == ""


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
