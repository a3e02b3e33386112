"""Trace replay: turn a CSV or JSONL request trace into usage events and send them, paced.

Each data row becomes one usage event. Rows are numbered from 0 in file order, counting data
rows only (not the CSV header, not blank lines); that *row index* drives the deterministic
``event_id`` (``f"{id_prefix}-{row_index}"``, prefix defaulting to the file's stem, so two
replays of one file are exact duplicates of each other) and the model/label rotation described
on :class:`Assignment`.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import re
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

import orjson
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

from streams.producer import ProducerError, UsageProducer

__all__ = [
    "Assignment",
    "ColumnMapping",
    "EventSink",
    "ReplayStats",
    "TraceFormat",
    "TraceFormatError",
    "add_replay_arguments",
    "format_event_time",
    "iter_usage_events",
    "parse_trace_time",
    "replay",
    "run_replay",
    "trace_format_for",
]

TraceFormat = Literal["csv", "jsonl"]

_SUFFIX_FORMATS: Final[Mapping[str, TraceFormat]] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: Epoch seconds past 9999-12-31 cannot be a datetime; checked before converting so that a
#: value such as 1e999999 is rejected instead of expanded into a million-digit integer.
_MAX_EPOCH_SECONDS: Final = Decimal(253_402_300_799)
_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})"
    r"(?:[.,](\d{1,9}))?"
    r"(?:\s*([Zz])|\s*([+-])(\d{2}):?(\d{2}))?"
)
_EPOCH_SECONDS = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGRAL = re.compile(r"\+?(\d+)(?:\.0*)?")
#: While pacing, buffered events are handed to the producer before a sleep unless that was done
#: less than this long ago and the sleep is shorter: it bounds the delay batching adds at low
#: speeds without turning every event into its own message at high ones.
_BATCH_PUSH_INTERVAL_S: Final = 0.05
#: Progress is redrawn every this many events (and on every sleep): per-event updates would
#: cost more than the replay itself at full speed.
_PROGRESS_EVERY: Final = 1024
_EXIT_BAD_INPUT: Final = 2
_EXIT_DELIVERY_FAILED: Final = 1


class TraceFormatError(ValueError):
    """A trace row cannot be read; the message names the file, line and column."""

    def __init__(self, path: Path, line: int, column: str | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.column = column
        self.reason = reason
        where = f"{path}, line {line}" + (f", column {column!r}" if column is not None else "")
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class ColumnMapping:
    """Which source column (CSV header name or JSONL key) holds each usage field.

    The defaults fit the Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``).

    >>> ColumnMapping.parse("ts=time,cached=cache_hits").input_tokens
    'ContextTokens'
    """

    ts: str = "TIMESTAMP"
    input_tokens: str = "ContextTokens"
    output_tokens: str = "GeneratedTokens"
    cached_input_tokens: str | None = None
    model: str | None = None
    event_id: str | None = None
    latency_ms: str | None = None

    def __post_init__(self) -> None:
        for name, column in self._columns():
            if not column:
                raise ValueError(f"column for {name} must be a non-empty name")

    @classmethod
    def parse(cls, spec: str) -> ColumnMapping:
        """Read ``ts=TIMESTAMP,input=ContextTokens,...``; fields not named keep their defaults.

        Keys: ts, input, output, cached, model, event_id, latency (or the field names).
        """
        chosen: dict[str, str] = {}
        for item in spec.split(","):
            key, sep, column = item.partition("=")
            key, column = key.strip(), column.strip()
            field_name = _COLUMN_KEYS.get(key)
            if not sep or field_name is None:
                keys = ", ".join(k for k in _COLUMN_KEYS if k in _SHORT_COLUMN_KEYS)
                raise ValueError(f"{item.strip()!r} is not KEY=COLUMN with KEY one of {keys}")
            if field_name in chosen:
                raise ValueError(f"column for {key!r} given twice")
            chosen[field_name] = column
        return cls(**chosen)

    def _columns(self) -> list[tuple[str, str]]:
        named = [
            ("ts", self.ts),
            ("input_tokens", self.input_tokens),
            ("output_tokens", self.output_tokens),
            ("cached_input_tokens", self.cached_input_tokens),
            ("model", self.model),
            ("event_id", self.event_id),
            ("latency_ms", self.latency_ms),
        ]
        return [(name, column) for name, column in named if column is not None]


_SHORT_COLUMN_KEYS: Final = {
    "ts": "ts",
    "input": "input_tokens",
    "output": "output_tokens",
    "cached": "cached_input_tokens",
    "model": "model",
    "event_id": "event_id",
    "latency": "latency_ms",
}
_COLUMN_KEYS: Final = {
    **_SHORT_COLUMN_KEYS,
    **{name: name for name in _SHORT_COLUMN_KEYS.values()},
}


@dataclass(frozen=True)
class Assignment:
    """Model and labels given to each trace row: fixed, or rotating by row index.

    The rule, for row index ``i``:

    - model: the row's own model column (``ColumnMapping.model``) when mapped and non-empty;
      otherwise ``model`` when set; otherwise ``models[i % len(models)]``.
    - labels: for each ``key: value``, ``value`` itself when it is a string, otherwise
      ``value[i % len(value)]``. Every label rotates on its own length, independently of the
      models and of the other labels.

    >>> a = Assignment(models=("llama-2-70b", "llama-2-7b", "gpt-4"),
    ...                labels={"team": ("search", "ads"), "env": "prod"})
    >>> a.model_for(4), a.labels_for(4)
    ('llama-2-7b', {'team': 'search', 'env': 'prod'})
    """

    model: str | None = None
    models: tuple[str, ...] = ()
    labels: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        models = _string_tuple(self.models, "models")
        if self.model is not None and models:
            raise ValueError("give either a fixed model or rotating models, not both")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValueError("model must be a non-empty string")
        labels: dict[str, str | tuple[str, ...]] = {}
        for key, value in self.labels.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"label key {key!r} must be a non-empty string")
            labels[key] = value if isinstance(value, str) else _string_tuple(value, key)
            if labels[key] == ():
                raise ValueError(f"label {key!r} needs at least one value")
        # Frozen means frozen: a caller's later edit to its dict must not change the rotation.
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "labels", MappingProxyType(labels))

    def model_for(self, row_index: int) -> str | None:
        """Model for row ``row_index`` when the trace itself names none."""
        if self.model is not None:
            return self.model
        if self.models:
            return self.models[row_index % len(self.models)]
        return None

    def labels_for(self, row_index: int) -> dict[str, str]:
        """Labels for row ``row_index``."""
        return {
            key: value if isinstance(value, str) else value[row_index % len(value)]
            for key, value in self.labels.items()
        }


@dataclass(frozen=True)
class ReplayStats:
    """What one replay sent: event count, first and last event time, wall-clock seconds."""

    count: int
    first_event_time: datetime | None
    last_event_time: datetime | None
    wall_seconds: float


class EventSink(Protocol):
    """Where :func:`replay` sends events; ``UsageProducer`` is the real one."""

    def send(self, event: Mapping[str, Any]) -> None:
        """Queue one event."""

    def send_partial_batch(self) -> None:
        """Hand buffered events on now."""


def parse_trace_time(value: object) -> datetime:
    """Read a trace timestamp as an aware UTC datetime, truncated to whole microseconds.

    Accepted: RFC 3339 / ISO 8601 with an offset or ``Z``; a naive ``YYYY-MM-DD HH:MM:SS[.f]``
    (``T`` or space), which is read as UTC because traces such as Azure's carry no zone; or
    epoch seconds as a number or a numeric string. Fractions may have up to 9 digits (Azure's
    have 7); digits beyond the microsecond are dropped (truncated toward the past, not rounded).
    """
    if isinstance(value, bool):
        raise ValueError("a timestamp cannot be a boolean")
    if isinstance(value, int):
        return _from_epoch(Decimal(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite epoch time")
        # repr gives the shortest decimal that round-trips, so 0.68059 is not read as 0.680589.
        return _from_epoch(Decimal(repr(value)))
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp string or epoch seconds, got {value!r}")
    text = value.strip()
    if _EPOCH_SECONDS.fullmatch(text):
        return _from_epoch(Decimal(text))
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{value!r} is not a timestamp (expected e.g. 2023-11-16 18:15:46.6805900, "
            "2024-05-01T12:00:00Z or epoch seconds)"
        )
    # A "Z" and no zone at all both mean UTC, so the zulu group needs no reading.
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    zone = UTC
    if sign is not None:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        zone = timezone(-offset if sign == "-" else offset)
    micros = int((fraction or "").ljust(6, "0")[:6])
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, zone
        )
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid time: {exc}") from None
    return moment.astimezone(UTC)


def format_event_time(moment: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with microseconds and ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def trace_format_for(path: Path) -> TraceFormat:
    """Tell a trace's format from its suffix (.csv, .jsonl, .ndjson)."""
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise ValueError(
            f"cannot tell the format of {path} from its suffix; say csv or jsonl explicitly"
        )
    return found


def iter_usage_events(
    path: str | Path,
    mapping: ColumnMapping,
    assignment: Assignment,
    *,
    id_prefix: str | None = None,
    limit: int | None = None,
    file_format: TraceFormat | None = None,
) -> Generator[dict[str, Any], None, None]:
    """Yield one usage-event dict per trace row, in file order; bad rows raise TraceFormatError.

    ``ts`` is RFC 3339 UTC with microseconds (``2023-11-16T18:15:46.680590Z``); ``event_id``
    comes from the mapped column or is ``f"{id_prefix}-{row_index}"``; model and labels follow
    :class:`Assignment`. ``limit`` stops after that many rows. Reading is lazy: the file is
    opened on the first ``next()``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    source = Path(path)
    kind = file_format if file_format is not None else trace_format_for(source)
    prefix = source.stem if id_prefix is None else id_prefix
    records = _csv_records(source, mapping) if kind == "csv" else _jsonl_records(source)
    for row_index, (line, record) in enumerate(itertools.islice(records, limit)):
        yield _usage_event(source, line, row_index, record, mapping, assignment, prefix)


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
    """Send ``events`` to ``producer``, paced by their event times; return what was sent.

    ``speed=0`` sends as fast as possible and never sleeps. ``speed=s > 0`` sends each event
    when ``(ts - first ts) / s`` seconds have passed on ``clock`` since the first was sent: the
    schedule is anchored, so time spent sending is absorbed rather than accumulated, and the
    replay sleeps only while it is ahead. Events earlier than an already-sent one go at once.
    ``progress`` shows a transient progress bar on stderr (``total`` sizes it). The caller owns
    the producer, so flushing it is the caller's job.
    """
    if not (math.isfinite(speed) and speed >= 0):
        raise ValueError(f"speed must be a finite number >= 0, got {speed}")
    started = clock()
    count = 0
    first_ts: object = None
    last_ts: object = None
    anchor_event: datetime | None = None
    anchor_wall = started
    last_push = started
    with _progress(progress, total) as report:
        for event in events:
            ts = event.get("ts")
            if speed > 0:
                moment = _event_time(event)
                if anchor_event is None:
                    anchor_event, anchor_wall = moment, clock()
                else:
                    due = anchor_wall + (moment - anchor_event).total_seconds() / speed
                    now = clock()
                    if due > now:
                        if due - now >= _BATCH_PUSH_INTERVAL_S or (
                            now - last_push >= _BATCH_PUSH_INTERVAL_S
                        ):
                            producer.send_partial_batch()
                            now = last_push = clock()
                        report(count)
                        if due > now:
                            sleep(due - now)
            producer.send(event)
            if count == 0:
                first_ts = ts
            last_ts = ts
            count += 1
            if count % _PROGRESS_EVERY == 0:
                report(count)
        report(count)
    wall = clock() - started
    if count == 0:
        return ReplayStats(0, None, None, wall)
    # Only the ends are parsed when not pacing: full speed should cost no per-event parsing.
    first = _event_time({"ts": first_ts})
    last = _event_time({"ts": last_ts})
    return ReplayStats(count, first, last, wall)


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


def _from_epoch(seconds: Decimal) -> datetime:
    if abs(seconds) > _MAX_EPOCH_SECONDS:
        raise ValueError(f"epoch time {seconds} is out of range")
    micros = int((seconds * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise ValueError(f"epoch time {seconds} is out of range") from None


def _csv_records(source: Path, mapping: ColumnMapping) -> Iterator[tuple[int, dict[str, str]]]:
    wanted = [column for _, column in mapping._columns()]
    # utf-8-sig: spreadsheets often save a BOM that would otherwise glue onto the first name.
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise TraceFormatError(source, 1, None, "the file is empty; expected a header row")
        positions = {name.strip(): index for index, name in enumerate(header)}
        for column in wanted:
            if column not in positions:
                raise TraceFormatError(
                    source, 1, column, f"not in the header (columns: {', '.join(header)})"
                )
        picks = [(column, positions[column]) for column in dict.fromkeys(wanted)]
        width = len(header)
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise TraceFormatError(
                    source, reader.line_num, None, f"{len(row)} fields, the header has {width}"
                )
            yield reader.line_num, {column: row[index] for column, index in picks}


def _jsonl_records(source: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with source.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise TraceFormatError(source, line, None, f"not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise TraceFormatError(source, line, None, "expected a JSON object per line")
            yield line, record


def _usage_event(
    source: Path,
    line: int,
    row_index: int,
    record: Mapping[str, Any],
    mapping: ColumnMapping,
    assignment: Assignment,
    prefix: str,
) -> dict[str, Any]:
    def cell(column: str | None, *, required: bool) -> Any:
        if column is None:
            return None
        value = record.get(column)
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            if required:
                raise TraceFormatError(source, line, column, "missing or empty")
            return None
        return value

    def convert(column: str, value: Any, parse: Callable[[Any], Any]) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise TraceFormatError(source, line, column, str(exc)) from None

    ts_raw = cell(mapping.ts, required=True)
    moment = convert(mapping.ts, ts_raw, parse_trace_time)
    model = cell(mapping.model, required=False)
    if model is None:
        model = assignment.model_for(row_index)
        if model is None:
            raise TraceFormatError(
                source, line, mapping.model, "no model: the row names none and none is assigned"
            )
    elif not isinstance(model, str):
        raise TraceFormatError(source, line, mapping.model, f"model {model!r} is not a string")
    event_id = cell(mapping.event_id, required=True) if mapping.event_id else None
    if event_id is None:
        event_id = f"{prefix}-{row_index}"
    elif isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)
    elif not isinstance(event_id, str):
        raise TraceFormatError(
            source, line, mapping.event_id, f"event id {event_id!r} is not a string"
        )
    event: dict[str, Any] = {
        "event_id": event_id,
        "ts": format_event_time(moment),
        "model": model,
        "input_tokens": convert(
            mapping.input_tokens, cell(mapping.input_tokens, required=True), _token_count
        ),
        "output_tokens": convert(
            mapping.output_tokens, cell(mapping.output_tokens, required=True), _token_count
        ),
    }
    cached = cell(mapping.cached_input_tokens, required=False)
    if cached is not None and mapping.cached_input_tokens is not None:
        event["cached_input_tokens"] = convert(mapping.cached_input_tokens, cached, _token_count)
    latency = cell(mapping.latency_ms, required=False)
    if latency is not None and mapping.latency_ms is not None:
        event["latency_ms"] = convert(mapping.latency_ms, latency, _milliseconds)
    event["labels"] = assignment.labels_for(row_index)
    return event


def _token_count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a token count")
    if isinstance(value, int):
        count = value
    elif isinstance(value, float) and value.is_integer():
        count = int(value)
    elif isinstance(value, str) and (match := _INTEGRAL.fullmatch(value)):
        count = int(match.group(1))
    else:
        raise ValueError(f"{value!r} is not a whole, non-negative token count")
    if count < 0:
        raise ValueError(f"{value!r} is negative; token counts cannot be")
    return count


def _milliseconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a latency in milliseconds")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{value!r} is not a latency in milliseconds") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} is not a finite, non-negative latency")
    return number


def _event_time(event: Mapping[str, Any]) -> datetime:
    try:
        return parse_trace_time(event.get("ts"))
    except ValueError as exc:
        raise ValueError(f"event {event.get('event_id')!r}: ts {exc}") from None


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


def _string_tuple(values: Sequence[str] | str, name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"{name} must be a sequence of strings, not one string")
    result = tuple(values)
    for value in result:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}: {value!r} is not a non-empty string")
    return result


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
    print(f"error: {message}", file=sys.stderr)
    return code
