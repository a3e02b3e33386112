"""``costflux replay``: read a CSV or JSONL request trace and send its usage events, paced.

The work is done elsewhere, and this module only wires it to the command line: reading the
trace and mapping its columns in ``costflux.core.trace`` (a file on disk: ``streams.trace``),
pacing into a sink in ``streams.pacing``, Kafka in ``streams.producer``. Here: the arguments,
the progress bar, the summary and the exit codes.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, closing, nullcontext
from pathlib import Path
from typing import Any, Final

from confluent_kafka import KafkaException
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from costflux.core.trace import (
    Assignment,
    ColumnMapping,
    TraceFormat,
    TraceFormatError,
    format_event_time,
    trace_format_for,
)
from costflux.streams.pacing import EventSink, ReplayStats, pace
from costflux.streams.producer import ProducerError, UsageProducer
from costflux.streams.trace import iter_usage_events

__all__ = ["add_replay_arguments", "replay", "run_replay"]

_EXIT_BAD_INPUT: Final = 2
_EXIT_DELIVERY_FAILED: Final = 1


def replay(
    events: Iterable[Mapping[str, Any]],
    producer: EventSink,
    *,
    speed: float = 0.0,
    progress: bool = False,
    total: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayStats:
    """Send ``events`` to ``producer`` as ``streams.pacing.pace`` does; return what was sent.

    ``progress`` shows a transient progress bar on stderr (``total`` sizes it). The caller owns
    the producer, so flushing it is the caller's job.
    """
    with _progress(progress, total) as report:
        return pace(events, producer, speed=speed, clock=clock, sleep=sleep, on_progress=report)


def add_replay_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``costflux replay`` arguments to ``parser``."""
    parser.add_argument("file", metavar="FILE", type=Path, help="trace file (CSV or JSONL)")
    parser.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        default=None,
        help="trace format (default: from the suffix: .csv, .jsonl, .ndjson)",
    )
    parser.add_argument(
        "--columns",
        type=_columns_argument,
        default=None,
        metavar="KEY=COLUMN,...",
        help="source columns, keys ts, input, output, cached, model, event_id, latency "
        "(default: ts=TIMESTAMP,input=ContextTokens,output=GeneratedTokens, the Azure trace)",
    )
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--model", default=None, help="model for every row")
    models.add_argument(
        "--models",
        type=_list_argument,
        default=None,
        metavar="A,B,C",
        help="models rotating by row index: row i gets the (i mod n)-th",
    )
    parser.add_argument(
        "--label",
        action="append",
        type=_label_argument,
        default=None,
        metavar="KEY=V1[,V2,...]",
        help="label for every row (one value) or rotating by row index (several); repeatable",
    )
    parser.add_argument(
        "--speed",
        type=_speed_argument,
        default=0.0,
        help="event-time speed-up: 1 = real time, 60 = an hour a minute, 0 = no pacing (default 0)",
    )
    parser.add_argument("--limit", type=_count_argument, default=None, help="replay N rows")
    parser.add_argument(
        "--id-prefix", default=None, help="event_id prefix (default: the file's stem)"
    )
    parser.add_argument(
        "--events-per-message",
        type=_positive_argument,
        default=100,
        metavar="N",
        help="events per Kafka message, sent as a JSON array when N > 1 (default 100)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_replay(args: argparse.Namespace, producer_config: Mapping[str, str], topic: str) -> int:
    """Replay the trace named in ``args`` into ``topic``; return the process exit code.

    0 on success; 2 when the arguments or the trace are wrong (nothing is sent if that shows
    in the header or first row); 1 when Kafka did not take every message.
    """
    file: Path = args.file
    try:
        mapping = args.columns if args.columns is not None else ColumnMapping()
        labels: dict[str, str | tuple[str, ...]] = {}
        for key, value in args.label or ():
            if key in labels:
                raise ValueError(f"--label {key} given twice")
            labels[key] = value
        assignment = Assignment(model=args.model, models=tuple(args.models or ()), labels=labels)
        if mapping.model is None and assignment.model_for(0) is None:
            raise ValueError(
                "the trace has no model column: pass --model NAME, --models A,B,C "
                "or --columns model=COLUMN"
            )
        events = iter_usage_events(
            file,
            mapping,
            assignment,
            id_prefix=args.id_prefix,
            limit=args.limit,
            file_format=args.format,
        )
        # Reading the first row before connecting makes a wrong file or mapping fail fast.
        first = next(events, None)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot replay {file}: {_reason(exc)}", _EXIT_BAD_INPUT)
    if first is None:
        print(f"{file}: no rows to replay", file=sys.stderr)
        return 0
    show_progress = not args.no_progress
    total = _estimate_rows(file, args.format, args.limit) if show_progress else None
    producer: UsageProducer | None = None
    try:
        with (
            closing(events),
            UsageProducer(
                producer_config, topic, events_per_message=args.events_per_message
            ) as producer,
        ):
            stats = replay(
                itertools.chain((first,), events),
                producer,
                speed=args.speed,
                progress=show_progress,
                total=total,
            )
    except TraceFormatError as exc:
        sent = producer.events_sent if producer is not None else 0
        return _fail(f"{exc} (the {sent} events before it were sent)", _EXIT_BAD_INPUT)
    except ProducerError as exc:
        return _fail(f"replay to {topic!r} failed: {exc}", _EXIT_DELIVERY_FAILED)
    except KafkaException as exc:
        # The only KafkaException left unmapped is librdkafka rejecting the configuration.
        return _fail(f"cannot create a Kafka producer: {exc}", _EXIT_BAD_INPUT)
    assert stats.first_event_time is not None and stats.last_event_time is not None
    print(
        f"replayed {stats.count} events from {file} to {topic} in {stats.wall_seconds:.2f} s "
        f"(event time {format_event_time(stats.first_event_time)} .. "
        f"{format_event_time(stats.last_event_time)})"
    )
    return 0


def _progress(enabled: bool, total: int | None) -> AbstractContextManager[Callable[[int], None]]:
    if not enabled:
        return nullcontext(_ignore_progress)
    return _ProgressBar(total)


def _ignore_progress(count: int) -> None:
    del count


class _ProgressBar(AbstractContextManager[Callable[[int], None]]):
    """A transient rich progress bar on stderr, so stdout stays clean for the summary."""

    def __init__(self, total: int | None) -> None:
        self._progress = Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task("replay", total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._progress.start()
        return self._update

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def _update(self, count: int) -> None:
        self._progress.update(self._task, completed=count)


def _estimate_rows(file: Path, file_format: TraceFormat | None, limit: int | None) -> int | None:
    try:
        kind = file_format if file_format is not None else trace_format_for(file)
        with file.open("rb") as handle:
            newlines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
            handle.seek(-1, 2)
            unterminated = handle.read(1) != b"\n"
    except (OSError, ValueError):
        return limit
    # Lines are only an estimate of rows (blank lines, quoted newlines): good enough for a bar.
    rows = max(newlines + unterminated - (1 if kind == "csv" else 0), 0)
    return rows if limit is None else min(rows, limit)


def _columns_argument(text: str) -> ColumnMapping:
    try:
        return ColumnMapping.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _list_argument(text: str) -> tuple[str, ...]:
    values = tuple(value.strip() for value in text.split(","))
    if not all(values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected A,B,C with no empty names")
    return values


def _label_argument(text: str) -> tuple[str, str | tuple[str, ...]]:
    key, sep, values_text = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE or KEY=V1,V2,...")
    values = _list_argument(values_text)
    return key, values[0] if len(values) == 1 else values


def _speed_argument(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not (math.isfinite(speed) and speed >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0 (0 = no pacing)")
    return speed


def _count_argument(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 0")
    return count


def _positive_argument(text: str) -> int:
    count = _count_argument(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return count


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _fail(message: str, code: int) -> int:
    """Replay's own codes (docs/commands-and-api.md): 2 for a trace it cannot read is an
    InputError by kind (65), so these are not raised for ``costflux.cli.main`` to print."""
    print(f"costflux replay: {message}", file=sys.stderr)
    return code
