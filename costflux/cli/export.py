"""``costflux export focus``: a worker's costs as FOCUS rows (CSV or Parquet).

Reads the allocation API of a running worker (or ``costflux demo``) one charge period per
set, the GPU report of the periods with GPU cost, and writes what ``costflux.core.focus``
builds from them. The window is read once as absolute times, so every query of an export
(and of a live worker, whose "now" moves) covers the same span.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from costflux.api_client import get_data, read_from_worker
from costflux.core.errors import ConfigError, CostfluxError
from costflux.core.focus import (
    COLUMN_KINDS,
    COLUMNS,
    GROUP_DIMENSIONS,
    LABEL_DIMENSIONS,
    FocusAccount,
    GpuUse,
    csv_cells,
    focus_rows,
    gpu_use,
    needs_known_values,
)
from costflux.settings import Settings

__all__ = ["add_export_command", "write_csv", "write_parquet"]

_PERIODS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
#: The API answers at most 1,000 steps a query; longer windows are read in parts.
_STEPS_PER_QUERY = 24 * 31
_AGGREGATE = ",".join(LABEL_DIMENSIONS)

Sets = list[dict[str, dict[str, Any]]]


def add_export_command(commands: Any) -> None:
    export = commands.add_parser("export", help="export costs in a standard format")
    formats = export.add_subparsers(dest="subcommand", required=True, metavar="FORMAT")
    focus = formats.add_parser(
        "focus", help="FOCUS 1.0 rows (FinOps Open Cost and Usage Specification) as CSV or "
        "Parquet, read from a worker")
    focus.add_argument("--window", default="month",
                       help="month, lastmonth, 30d, ... or START,END in RFC 3339 (default: "
                       "this calendar month)")
    focus.add_argument("--period", choices=tuple(_PERIODS), default="hour",
                       help="charge period of a row (default: hour)")
    focus.add_argument("--format", choices=("csv", "parquet"), default="csv", dest="form")
    focus.add_argument("--output", "-o", type=Path, default=None,
                       help="file to write (default: standard output; required for parquet)")
    focus.add_argument("--url", default="http://127.0.0.1:8080",
                       help="the worker's HTTP address (default: the demo's)")
    focus.add_argument("--billing-account", default="costflux",
                       help="BillingAccountId and BillingAccountName (default: costflux)")
    focus.add_argument("--provider", default="costflux",
                       help="ProviderName, PublisherName, InvoiceIssuerName (default: costflux)")
    focus.set_defaults(run=_run_focus)


def _run_focus(args: argparse.Namespace, settings: Settings) -> int:
    if args.form == "parquet" and args.output is None:
        raise ConfigError("--format parquet needs --output FILE")
    writer: Callable[[Iterator[dict[str, object]], IO[Any] | Path], None]
    writer = write_parquet if args.form == "parquet" else write_csv
    if args.form == "parquet":
        try:
            _pyarrow()
        except ImportError:
            raise ConfigError("Parquet needs pyarrow: pip install 'costflux[focus]'") from None
    account = FocusAccount(billing_account_id=args.billing_account,
                           billing_account_name=args.billing_account, provider=args.provider)
    rows, status = read_from_worker("export focus", args.url, lambda: list(read_focus_rows(
        args.url, args.window, _PERIODS[args.period], account,
        token=settings.http_token_value())))
    if rows is None:
        return status
    try:
        with _destination(args.output, binary=args.form == "parquet") as out:
            writer(iter(rows), out)
    except OSError as exc:
        raise CostfluxError(f"cannot write {args.output}: {exc}") from exc
    if args.output is not None:
        print(f"{len(rows)} FOCUS rows written to {args.output}", file=sys.stderr)
    return 0


def read_focus_rows(
    base: str, window: str, period: timedelta, account: FocusAccount | None = None,
    token: str | None = None,
) -> Iterator[dict[str, object]]:
    """The FOCUS rows of ``window`` from the worker at ``base``, one per ``period``
    (``token``: the worker's HTTP bearer token, when it wants one)."""

    def get(path: str, **params: str) -> Any:
        return get_data(base, path, token=token, **params)

    span = _absolute_span(get, window)
    if span is None:
        return iter(())
    sets: Sets = []
    for start, end in _parts(span, period):
        sets.extend(get("/model/allocation", window=f"{_iso(start)},{_iso(end)}",
                        aggregate=_AGGREGATE, step=_step(period)))
    gpu: dict[str, dict[str, list[GpuUse]]] = {}
    for allocation_set in sets:
        rows = list(allocation_set.values())
        if rows and any(_has_gpu(row) for row in rows):
            first, last = str(rows[0]["start"]), str(rows[0]["end"])
            gpu[first] = gpu_use(_first(get("/model/gpu", window=f"{first},{last}",
                                            aggregate="model,gpu_type,pricing_tier")))
    known = None
    if any(needs_known_values(name) for s in sets for name in s):
        window_text = f"{_iso(span[0])},{_iso(span[1])}"
        known = {dimension: frozenset(_first(get("/model/allocation", window=window_text,
                                                 aggregate=aggregate)))
                 for dimension, aggregate in zip(GROUP_DIMENSIONS, LABEL_DIMENSIONS,
                                                 strict=True)}
    return focus_rows(sets, gpu=gpu, known=known, account=account or FocusAccount())


def _absolute_span(get: Callable[..., Any], window: str) -> tuple[datetime, datetime] | None:
    """The window as the worker reads it now (None: it has nothing to say about it)."""
    answer = _first(get("/model/allocation", window=window, aggregate="model",
                        accumulate="true"))
    for row in answer.values():
        return _parse(str(row["start"])), _parse(str(row["end"]))
    return None


def _parts(span: tuple[datetime, datetime],
           period: timedelta) -> Iterator[tuple[datetime, datetime]]:
    """The span cut at multiples of the period, at most _STEPS_PER_QUERY periods a part."""
    start, end = span
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    while start < end:
        boundary = epoch + (start - epoch) // period * period
        stop = min(end, boundary + _STEPS_PER_QUERY * period)
        yield start, stop
        start = stop


def _has_gpu(row: Mapping[str, Any]) -> bool:
    return bool(row.get("gpuCost") or row.get("idleCost")) or row.get("name") == "__idle__"


def _first(data: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return data[0] if data else {}


def _step(period: timedelta) -> str:
    return "1d" if period == timedelta(days=1) else "1h"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@contextmanager
def _destination(path: Path | None, binary: bool) -> Iterator[IO[Any] | Path]:
    if path is None:
        yield sys.stdout
    elif binary:
        yield path
    else:
        with path.open("w", newline="", encoding="utf-8") as handle:
            yield handle


def write_csv(rows: Iterator[dict[str, object]], out: IO[Any] | Path) -> None:
    """FOCUS rows as CSV with a header: exact decimals, RFC 3339 UTC times."""
    if isinstance(out, Path):
        with out.open("w", newline="", encoding="utf-8") as handle:
            write_csv(rows, handle)
        return
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(csv_cells(row))


def write_parquet(rows: Iterator[dict[str, object]], out: IO[Any] | Path) -> None:
    """FOCUS rows as Parquet: decimals as float64 (what pandas and focus-validator read as
    FOCUS Decimal; the CSV keeps every pico-dollar), times as UTC timestamps."""
    pa, parquet = _pyarrow()
    types = {"decimal": pa.float64(), "datetime": pa.timestamp("s", tz="UTC"),
             "integer": pa.int64(), "string": pa.string(), "json": pa.string()}
    materialized = list(rows)
    columns = {column: [_parquet_value(row.get(column)) for row in materialized]
               for column in COLUMNS}
    schema = pa.schema([(column, types[COLUMN_KINDS[column]]) for column in COLUMNS])
    table = pa.table({column: pa.array(values, type=schema.field(column).type)
                      for column, values in columns.items()}, schema=schema)
    parquet.write_table(table, out)


def _parquet_value(value: object) -> object:
    return float(value) if isinstance(value, Decimal) else value


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet (the optional ``focus`` extra)."""
    return importlib.import_module("pyarrow"), importlib.import_module("pyarrow.parquet")
