"""Public request traces read as usage events: timestamps, column mapping, model and labels.

Pure: the caller opens the file and passes its lines in (``streams.trace`` does, for a path).
Each data row becomes one usage event. Rows are numbered from 0 in file order, counting data
rows only (not the CSV header, not blank lines); that *row index* drives the deterministic
``event_id`` (``f"{id_prefix}-{row_index}"``, so two readings of one file are exact duplicates
of each other) and the model/label rotation described on :class:`Assignment`.

>>> lines = ["TIMESTAMP,ContextTokens,GeneratedTokens\\n", "2023-11-16 18:15:46.68,374,44\\n"]
>>> records = csv_records(lines, PurePath("conv.csv"), ColumnMapping())
>>> [event] = usage_events(records, ColumnMapping(), Assignment(model="gpt-4"),
...                        source=PurePath("conv.csv"), id_prefix="conv")
>>> event["event_id"], event["ts"], event["input_tokens"]
('conv-0', '2023-11-16T18:15:46.680000Z', 374)
"""

from __future__ import annotations

import csv
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal
from pathlib import PurePath
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson

from costflux.core.errors import InputError

__all__ = [
    "Assignment",
    "ColumnMapping",
    "TraceFormat",
    "TraceFormatError",
    "csv_records",
    "format_event_time",
    "jsonl_records",
    "parse_trace_time",
    "trace_format_for",
    "usage_events",
]

TraceFormat = Literal["csv", "jsonl"]
#: One data row: its line number in the file (for errors) and its cells by column name.
Record = tuple[int, Mapping[str, Any]]

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


class TraceFormatError(InputError):
    """A trace row cannot be read; the message names the file, line and column."""

    def __init__(self, path: PurePath, line: int, column: str | None, reason: str) -> None:
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
        for name, column in self.columns():
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

    def columns(self) -> list[tuple[str, str]]:
        """(usage field, source column) for every field mapped to a column."""
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


def trace_format_for(path: PurePath) -> TraceFormat:
    """Tell a trace's format from its suffix (.csv, .jsonl, .ndjson)."""
    found = _SUFFIX_FORMATS.get(path.suffix.lower())
    if found is None:
        raise ValueError(
            f"cannot tell the format of {path} from its suffix; say csv or jsonl explicitly"
        )
    return found


def csv_records(lines: Iterable[str], source: PurePath, mapping: ColumnMapping
                ) -> Iterator[Record]:
    """The data rows of a CSV trace (``lines`` as from a file opened with ``newline=""``),
    keeping the mapped columns; a missing column or a short row raises TraceFormatError."""
    wanted = [column for _, column in mapping.columns()]
    reader = csv.reader(lines)
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


def jsonl_records(lines: Iterable[bytes], source: PurePath) -> Iterator[Record]:
    """The objects of a JSON Lines trace, one per non-blank line; anything else raises
    TraceFormatError."""
    for line, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise TraceFormatError(source, line, None, f"not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise TraceFormatError(source, line, None, "expected a JSON object per line")
        yield line, record


def usage_events(
    records: Iterable[Record],
    mapping: ColumnMapping,
    assignment: Assignment,
    *,
    source: PurePath,
    id_prefix: str,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """One usage-event dict per record, in order; a bad record raises TraceFormatError.

    ``ts`` is RFC 3339 UTC with microseconds (``2023-11-16T18:15:46.680590Z``); ``event_id``
    comes from the mapped column or is ``f"{id_prefix}-{row_index}"``; model and labels follow
    :class:`Assignment`. ``limit`` stops after that many records, reading no further.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    for row_index, (line, record) in enumerate(itertools.islice(records, limit)):
        yield _usage_event(source, line, row_index, record, mapping, assignment, id_prefix)


def _from_epoch(seconds: Decimal) -> datetime:
    if abs(seconds) > _MAX_EPOCH_SECONDS:
        raise ValueError(f"epoch time {seconds} is out of range")
    micros = int((seconds * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise ValueError(f"epoch time {seconds} is out of range") from None


def _usage_event(
    source: PurePath,
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


def _string_tuple(values: Sequence[str] | str, name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise ValueError(f"{name} must be a sequence of strings, not one string")
    result = tuple(values)
    for value in result:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name}: {value!r} is not a non-empty string")
    return result
