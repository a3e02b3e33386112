"""Trace files: a CSV or JSONL trace on disk read as usage events (``costflux.core.trace``).

The file is opened lazily, on the first ``next()``, and closed when the events run out or
the generator is closed; nothing here sends anything anywhere.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from costflux.core.trace import (
    Assignment,
    ColumnMapping,
    TraceFormat,
    csv_records,
    jsonl_records,
    trace_format_for,
    usage_events,
)

__all__ = ["iter_usage_events"]


def iter_usage_events(
    path: str | Path,
    mapping: ColumnMapping,
    assignment: Assignment,
    *,
    id_prefix: str | None = None,
    limit: int | None = None,
    file_format: TraceFormat | None = None,
) -> Generator[dict[str, Any], None, None]:
    """Yield one usage-event dict per row of the trace at ``path``; bad rows raise
    TraceFormatError (see ``costflux.core.trace.usage_events``).

    ``id_prefix`` defaults to the file's stem; ``file_format`` to the one its suffix names.
    ``limit`` stops after that many rows (``limit=0`` opens nothing).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    source = Path(path)
    kind = file_format if file_format is not None else trace_format_for(source)
    records = (csv_records(_text_lines(source), source, mapping) if kind == "csv"
               else jsonl_records(_binary_lines(source), source))
    yield from usage_events(records, mapping, assignment, source=source,
                            id_prefix=source.stem if id_prefix is None else id_prefix,
                            limit=limit)


def _text_lines(source: Path) -> Iterator[str]:
    # utf-8-sig: spreadsheets often save a BOM that would otherwise glue onto the first name.
    with source.open(newline="", encoding="utf-8-sig") as handle:
        yield from handle


def _binary_lines(source: Path) -> Iterator[bytes]:
    with source.open("rb") as handle:
        yield from handle
