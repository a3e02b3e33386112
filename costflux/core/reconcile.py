"""Reconciliation: costflux's cost against a provider's own cost report, per day and model.

Pure: the report arrives as text (already read), the maps as loaded data, the worker's answers
as the allocation API's ``data``; nothing here reads a file or the network. Money is
``Decimal`` throughout: JSON numbers are parsed as decimals, never as floats.

Report formats (each parser follows the provider's published reference):

- ``openai``: the organization Costs API (``GET /v1/organization/costs``): one page, a JSON
  array of pages, or JSON lines of pages. ``amount.value`` in dollars; with
  ``group_by=line_item`` the model is the line item before its last ``", "`` (``"gpt-4o-mini,
  input"`` -> ``gpt-4o-mini``); with ``group_by=project_id`` the project is ``project_id``.
- ``anthropic``: the Admin API cost report (``GET /v1/organizations/cost_report``), pages as
  above. ``amount`` is a decimal string in **cents** (``"123.45"`` is $1.2345); grouped by
  ``description`` the rows carry ``model`` and ``cost_type`` (non-token costs such as web
  search are left out, and said so: costflux prices tokens); grouped by ``workspace_id`` the
  project is the workspace (null: the default workspace).
- ``csv``: ``date,model,project,cost`` (``project`` optional; ``date`` a UTC day).
- ``focus``: a FOCUS 1.0+ cost and usage CSV: ``ChargePeriodStart``/``ChargePeriodEnd``,
  ``EffectiveCost`` (else ``BilledCost``; or the column asked for), ``ChargeCategory`` Usage
  rows only; the model from ``x_Model``, else ``SkuPriceDetails``' ``ModelId``, else
  ``ResourceId``; the project from ``x_Project``, else the ``Tags`` key ``project``.

A row whose charge period lies within one UTC day counts for that day (hourly rows add up);
one spanning several days (a monthly FOCUS row) is compared over its own period. A report
made of days covers every day from its first to its last.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation
from fnmatch import fnmatchcase
from typing import Any

from costflux.core.errors import InputError

__all__ = [
    "ALL_MODELS", "DAY_MS", "FORMATS", "OUTPUTS", "UNALLOCATED", "UNATTRIBUTED",
    "AllocationQuery", "CostfluxCosts", "Period", "ProviderLine", "ProviderReport",
    "Reconciliation", "ReconciledRow", "ReportError", "costflux_costs", "parse_amount_option",
    "parse_name_map", "parse_report", "plan_queries", "reconcile", "render",
]

FORMATS = ("openai", "anthropic", "csv", "focus")
OUTPUTS = ("table", "csv", "json")
DAY_MS = 86_400_000
#: The model of a report not broken down by model: compared with all of costflux's models.
ALL_MODELS = "*"
#: A row of a report broken down by model that names no model.
UNATTRIBUTED = "__unattributed__"
#: costflux's name for an empty label; a provider row without a project (e.g. Anthropic's
#: default workspace) is compared with costflux's usage that carries no ``project`` label.
UNALLOCATED = "__unallocated__"
#: Unshared idle GPU time: never billed by an API provider.
_IDLE = "__idle__"
#: Days per allocation query (``step=1d``): well inside the API's 1,000 steps and 20,000 tiles.
_DAYS_PER_QUERY = 31
#: Money arithmetic: exact (the default context rounds to 28 digits); an inexact result raises.
_EXACT = Context(prec=200, rounding=ROUND_HALF_EVEN, traps=[InvalidOperation, Inexact])
#: The finest amount accepted: far below a pico-dollar, far above what could make a sum inexact.
_FINEST_EXPONENT = -60
_FOCUS_COST_COLUMNS = ("EffectiveCost", "BilledCost", "ListCost", "ContractedCost")


class ReportError(InputError):
    """A provider report or map file that cannot be used; names the file, the place and the fix."""


@dataclass(frozen=True, order=True, slots=True)
class Period:
    """A span of time [start, end) in epoch milliseconds, UTC."""

    start_ms: int
    end_ms: int

    @classmethod
    def day_of(cls, ms: int) -> Period:
        start = ms - ms % DAY_MS
        return cls(start, start + DAY_MS)

    @property
    def is_day(self) -> bool:
        return self.start_ms % DAY_MS == 0 and self.end_ms - self.start_ms == DAY_MS

    @property
    def label(self) -> str:
        """``2025-08-01`` for a UTC day, else ``start/end`` in RFC 3339."""
        if self.is_day:
            return _iso(self.start_ms)[:10]
        return f"{_iso(self.start_ms)}/{_iso(self.end_ms)}"

    @property
    def window(self) -> str:
        """The allocation API's ``window`` parameter for this span."""
        return f"{_iso(self.start_ms)},{_iso(self.end_ms)}"


@dataclass(frozen=True, slots=True)
class ProviderLine:
    """One cost figure of a provider report, in dollars; None: the report does not say."""

    period: Period
    model: str | None
    project: str | None
    cost: Decimal


@dataclass(frozen=True, slots=True)
class ProviderReport:
    source: str
    format: str
    lines: tuple[ProviderLine, ...]
    #: Every period the report covers, empty buckets included.
    periods: frozenset[Period]
    notes: tuple[str, ...] = ()

    @property
    def by_model(self) -> bool:
        return any(line.model is not None for line in self.lines)

    @property
    def by_project(self) -> bool:
        return any(line.project is not None for line in self.lines)


@dataclass(frozen=True, slots=True)
class AllocationQuery:
    """One ``GET /model/allocation``; ``periods``: the period of each set it answers."""

    params: Mapping[str, str]
    periods: tuple[Period, ...]


@dataclass(slots=True)
class CostfluxCosts:
    """costflux's exact cost per (period, model, project); project None when not asked."""

    costs: dict[tuple[Period, str, str | None], Decimal] = field(default_factory=dict)
    #: Rows that had no ``tokenCostExact`` and were read from ``totalCostExact``.
    fallback_rows: int = 0


@dataclass(frozen=True, slots=True)
class ReconciledRow:
    """One (period, model, project) of both sides.

    >>> row = ReconciledRow(Period.day_of(0), "gpt-4o", None, Decimal("100.5"), Decimal("100"),
    ...                     True, True)
    >>> row.difference, row.percent, row.exceeds(Decimal("0.5")), row.exceeds(Decimal("0.4"))
    (Decimal('0.5'), Decimal('0.5'), False, True)
    """

    period: Period
    model: str
    project: str | None
    costflux: Decimal
    provider: Decimal
    in_costflux: bool
    in_provider: bool

    @property
    def difference(self) -> Decimal:
        return _EXACT.subtract(self.costflux, self.provider)

    @property
    def percent(self) -> Decimal | None:
        """difference / |provider| in percent; None when infinite (provider 0, costflux not)."""
        if self.provider == 0:
            return Decimal(0) if self.difference == 0 else None
        if self.difference == 0:
            return Decimal(0)
        return self.difference * 100 / self.provider.copy_abs()

    def exceeds(self, tolerance_pct: Decimal, min_difference: Decimal = Decimal(0)) -> bool:
        """|difference| over ``tolerance_pct`` % of |provider| (exactly: no rounding) and over
        ``min_difference`` dollars."""
        gap = self.difference.copy_abs()  # copy_abs: exact, abs() rounds to 28 digits
        return gap > min_difference and _EXACT.multiply(gap, 100) > _EXACT.multiply(
            tolerance_pct, self.provider.copy_abs())

    def status(self, tolerance_pct: Decimal, min_difference: Decimal = Decimal(0)) -> str:
        """ok; or over, new (the provider billed nothing), missing (costflux counted nothing)."""
        if not self.exceeds(tolerance_pct, min_difference):
            return "ok"
        if self.provider == 0:
            return "new"
        return "missing" if self.costflux == 0 else "over"


@dataclass(frozen=True, slots=True)
class Reconciliation:
    source: str
    format: str
    rows: tuple[ReconciledRow, ...]
    tolerance_pct: Decimal
    min_difference: Decimal
    by_project: bool
    costflux_field: str
    notes: tuple[str, ...]

    @property
    def mismatches(self) -> list[ReconciledRow]:
        return [r for r in self.rows if r.exceeds(self.tolerance_pct, self.min_difference)]

    @property
    def exit_code(self) -> int:
        """1 when any row is off by more than the tolerance, else 0."""
        return 1 if self.mismatches else 0

    def total(self) -> ReconciledRow:
        period = Period(min((r.period.start_ms for r in self.rows), default=0),
                        max((r.period.end_ms for r in self.rows), default=0))
        return ReconciledRow(period, "Total", None, _sum(r.costflux for r in self.rows),
                             _sum(r.provider for r in self.rows), True, True)


# ----------------------------------------------------------------------------- parsing


def parse_report(text: str, form: str | None, source: str, *,
                 cost_column: str | None = None, project_tag: str = "project") -> ProviderReport:
    """The report in ``text`` (``form`` one of FORMATS, or None to tell it from the content);
    ``source`` names the file in every error."""
    if form is not None and form not in FORMATS:
        raise ReportError(f"{source}: unknown report format {form!r}; use one of "
                          f"{', '.join(FORMATS)}")
    text = text.removeprefix("\ufeff")
    looks_json = text.lstrip().startswith(("{", "["))
    if form in ("openai", "anthropic") or (form is None and looks_json):
        if not looks_json:
            raise ReportError(f"{source}: --format {form} expects the API's JSON response, but "
                              "the file does not start with '{' or '['")
        pages = _json_pages(text, source)
        form = form or _detect_json(pages, source)
        parse = _parse_openai if form == "openai" else _parse_anthropic
        return parse(pages, source)
    if looks_json:
        raise ReportError(f"{source}: --format {form} expects a CSV file, but this is JSON; "
                          "use --format openai or anthropic, or leave --format out")
    rows = _csv_rows(text, source)
    header = rows[0][1] if rows else []
    if form is None:
        form = _detect_csv(header, source)
    if form == "focus":
        return _parse_focus(rows, source, cost_column, project_tag)
    return _parse_generic_csv(rows, source)


def parse_name_map(data: object, source: str, what: str) -> dict[str, str]:
    """A loaded ``--project-map``/``--model-map`` (YAML or JSON): provider name -> costflux
    name. ``what`` names the flag in errors."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ReportError(f"{source}: {what} must be a mapping of provider name to costflux "
                          f"name (e.g. `proj_abc: search`), not a {type(data).__name__}")
    names: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            raise ReportError(f"{source}: {what} entry {key!r}: the costflux name must be a "
                              f"non-empty string, got {value!r}; write `{key}: <name>`")
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise ReportError(f"{source}: {what} key {key!r} must be a string")
        names[str(key)] = str(value)
    return names


def parse_amount_option(text: str, flag: str) -> Decimal:
    """A non-negative decimal option (``--tolerance 0.5`` or ``0.5%``)."""
    try:
        value = Decimal(text.strip().removesuffix("%").strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0:
        raise ReportError(f"{flag} {text!r}: expected a non-negative number, e.g. {flag} 0.5")
    return value


def _json_pages(text: str, source: str) -> list[tuple[str, dict[str, Any]]]:
    """Pages from one JSON value (a page or an array of pages) or a sequence of them (JSON
    lines); each with its place for errors."""
    decoder = json.JSONDecoder(parse_float=Decimal)
    values: list[tuple[int, Any]] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        line = text.count("\n", 0, position) + 1
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{source}: line {exc.lineno}, column {exc.colno}: not valid JSON "
                              f"({exc.msg}); export the API's response body unchanged") from None
        values.append((line, value))
    if not values:
        raise ReportError(f"{source}: the file is empty; export the API's response body")
    pages: list[tuple[str, dict[str, Any]]] = []
    for line, value in values:
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for index, page in items:
            where = f"page {len(pages) + 1} (line {line}" + (
                f", item [{index}])" if index is not None else ")")
            if not isinstance(page, dict) or not isinstance(page.get("data"), list):
                raise ReportError(f"{source}: {where}: expected a page object with a 'data' "
                                  "list of buckets, as the API returns it")
            pages.append((where, page))
    return pages


def _detect_json(pages: list[tuple[str, dict[str, Any]]], source: str) -> str:
    for _, page in pages:
        for bucket in page["data"]:
            if isinstance(bucket, dict) and "start_time" in bucket:
                return "openai"
            if isinstance(bucket, dict) and "starting_at" in bucket:
                return "anthropic"
        if page.get("object") == "page":
            return "openai"
    raise ReportError(f"{source}: cannot tell whose report this is (no bucket with start_time "
                      "or starting_at); give --format openai or --format anthropic")


def _parse_openai(pages: list[tuple[str, dict[str, Any]]], source: str) -> ProviderReport:
    lines: list[ProviderLine] = []
    buckets = _Buckets()
    for where, page in pages:
        if page.get("object", "page") != "page":
            raise ReportError(f"{source}: {where}: object is {page.get('object')!r}, expected "
                              "'page' (the response of GET /v1/organization/costs)")
        for period, at, result in _bucket_results(
                page, f"{source}: {where}", buckets, ("start_time", "end_time"), _unix_seconds,
                ("results", "result")):
            lines.append(_openai_line(result, period, at))
    notes = _more_pages_note(pages, "GET /v1/organization/costs")
    return _report(source, "openai", lines, buckets.periods, notes)


def _bucket_results(
    page: Mapping[str, Any], where: str, buckets: _Buckets, time_keys: tuple[str, str],
    read_time: Callable[[object, str], int], result_keys: tuple[str, ...],
) -> Iterator[tuple[Period, str, object]]:
    """(period, where, result) of every result of every time bucket of a report page, as
    both providers shape them: ``data`` buckets with a start, an end and a results list."""
    for b, bucket in enumerate(page["data"]):
        at = f"{where}, data[{b}]"
        if not isinstance(bucket, dict):
            raise ReportError(f"{at}: expected a bucket object")
        start_key, end_key = time_keys
        start = read_time(bucket.get(start_key), f"{at}.{start_key}")
        end = read_time(bucket.get(end_key), f"{at}.{end_key}")
        period = buckets.period(start, end, at)
        results = next((bucket[key] for key in result_keys if key in bucket), None)
        if not isinstance(results, list):
            raise ReportError(f"{at}: expected a 'results' list")
        for r, result in enumerate(results):
            yield period, f"{at}.results[{r}]", result


def _openai_line(result: object, period: Period, at: str) -> ProviderLine:
    if not isinstance(result, dict):
        raise ReportError(f"{at}: expected an organization.costs.result object")
    kind = result.get("object", "organization.costs.result")
    if kind != "organization.costs.result":
        hint = (" (a usage report: it counts tokens, not dollars); export "
                "GET /v1/organization/costs instead") if str(kind).startswith(
                    "organization.usage") else ""
        raise ReportError(f"{at}: object is {kind!r}, expected 'organization.costs.result'{hint}")
    amount = result.get("amount")
    if not isinstance(amount, dict):
        raise ReportError(f"{at}.amount: expected {{\"value\": ..., \"currency\": \"usd\"}}")
    _require_usd(amount.get("currency"), f"{at}.amount.currency")
    cost = _decimal(amount.get("value"), f"{at}.amount.value", "dollars")
    return ProviderLine(period, _openai_model(result.get("line_item"), at),
                        _optional_text(result.get("project_id"), f"{at}.project_id"), cost)


def _openai_model(line_item: object, at: str) -> str | None:
    """``"gpt-4o-mini-2024-07-18, cached input"`` -> ``gpt-4o-mini-2024-07-18``; a line item
    without a comma (``"Image models"``) is its own name."""
    text = _optional_text(line_item, f"{at}.line_item")
    if text is None:
        return None
    model, comma, _direction = text.rpartition(", ")
    return model.strip() if comma and model.strip() else text


def _parse_anthropic(pages: list[tuple[str, dict[str, Any]]], source: str) -> ProviderReport:
    lines: list[ProviderLine] = []
    buckets = _Buckets()
    left_out: dict[str, Decimal] = {}
    for where, page in pages:
        for period, rat, result in _bucket_results(
                page, f"{source}: {where}", buckets, ("starting_at", "ending_at"), _rfc3339,
                ("results",)):
            if not isinstance(result, dict):
                raise ReportError(f"{rat}: expected a cost item object")
            if "amount" not in result and "uncached_input_tokens" in result:
                raise ReportError(f"{rat}: this is a usage report (tokens, no amount); "
                                  "export GET /v1/organizations/cost_report instead")
            _require_usd(result.get("currency"), f"{rat}.currency")
            # The reference: "Cost amount in lowest currency units (e.g. cents) as a
            # decimal string. For example, "123.45" in "USD" represents $1.23."
            cents = _decimal(result.get("amount"), f"{rat}.amount", "cents")
            cost = cents.scaleb(-2, _EXACT)
            cost_type = _optional_text(result.get("cost_type"), f"{rat}.cost_type")
            if cost_type is not None and cost_type != "tokens":
                left_out[cost_type] = _add(left_out.get(cost_type, Decimal(0)), cost)
                continue
            lines.append(ProviderLine(
                period, _optional_text(result.get("model"), f"{rat}.model"),
                _optional_text(result.get("workspace_id"), f"{rat}.workspace_id"), cost))
    notes = list(_more_pages_note(pages, "GET /v1/organizations/cost_report"))
    if left_out:
        parts = ", ".join(f"{kind} {_exact_dollars(amount)}"
                          for kind, amount in sorted(left_out.items()))
        notes.append(f"left out the report's non-token costs ({parts}): costflux prices tokens")
    return _report(source, "anthropic", lines, buckets.periods, notes)


def _csv_rows(text: str, source: str) -> list[tuple[int, list[str]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise ReportError(f"{source}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise ReportError(f"{source}: the file is empty; expected a header line and cost rows")
    return rows


def _detect_csv(header: Sequence[str], source: str) -> str:
    names = {name.strip() for name in header}
    if "ChargePeriodStart" in names:
        return "focus"
    if {"date", "model", "cost"} <= {name.lower() for name in names}:
        return "csv"
    raise ReportError(f"{source}: line 1: cannot tell the CSV's format from its header "
                      f"({', '.join(header)}); expected date,model,project,cost or a FOCUS "
                      "export (ChargePeriodStart, EffectiveCost, ...); or give --format")


def _columns(header: Sequence[str], source: str, *, fold: bool) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, name in enumerate(header):
        key = name.strip().lower() if fold else name.strip()
        if key in columns:
            raise ReportError(f"{source}: line 1: column {name.strip()!r} appears twice")
        columns[key] = index
    return columns


def _parse_generic_csv(rows: list[tuple[int, list[str]]], source: str) -> ProviderReport:
    (_, header), body = rows[0], rows[1:]
    columns = _columns(header, source, fold=True)
    missing = [name for name in ("date", "model", "cost") if name not in columns]
    if missing:
        raise ReportError(f"{source}: line 1: missing column(s) {', '.join(missing)}; the "
                          "header must be date,model,project,cost (project optional)")
    lines = []
    for number, row in body:
        at = f"{source}: line {number}"
        cell = _cells(row, columns, at, fold=True)
        try:
            day = datetime.strptime(cell("date"), "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise ReportError(f"{at}, column date: {cell('date')!r} is not a date; write "
                              "YYYY-MM-DD (a UTC day)") from None
        model = cell("model")
        if not model:
            raise ReportError(f"{at}, column model: empty; every row needs its model")
        if "currency" in columns:
            _require_usd(cell("currency"), f"{at}, column currency")
        cost = _decimal(cell("cost"), f"{at}, column cost", "dollars")
        project = cell("project") if "project" in columns else ""
        lines.append(ProviderLine(Period.day_of(_ms(day)), model, project or None, cost))
    return _report(source, "csv", lines, {line.period: source for line in lines}, [])


def _parse_focus(rows: list[tuple[int, list[str]]], source: str, cost_column: str | None,
                 project_tag: str) -> ProviderReport:
    (_, header), body = rows[0], rows[1:]
    columns = _columns(header, source, fold=False)
    if cost_column is None:
        cost_column = next((c for c in ("EffectiveCost", "BilledCost") if c in columns), None)
    for required in ("ChargePeriodStart", "ChargePeriodEnd", cost_column):
        if required is None or required not in columns:
            wanted = required or "EffectiveCost or BilledCost"
            raise ReportError(f"{source}: line 1: no {wanted} column; a FOCUS cost and usage "
                              f"export has ChargePeriodStart, ChargePeriodEnd and "
                              f"{', '.join(_FOCUS_COST_COLUMNS)} (found: {', '.join(header)})")
    assert cost_column is not None
    lines: list[ProviderLine] = []
    periods: dict[Period, str] = {}
    left_out: dict[str, Decimal] = {}
    for number, row in body:
        at = f"{source}: line {number}"
        cell = _cells(row, columns, at, fold=False)
        start = _rfc3339(cell("ChargePeriodStart"), f"{at}, column ChargePeriodStart")
        end = _rfc3339(cell("ChargePeriodEnd"), f"{at}, column ChargePeriodEnd")
        if end <= start:
            raise ReportError(f"{at}: ChargePeriodEnd is not after ChargePeriodStart")
        cost = _decimal(cell(cost_column), f"{at}, column {cost_column}", "dollars")
        if "BillingCurrency" in columns:
            _require_usd(cell("BillingCurrency"), f"{at}, column BillingCurrency")
        category = cell("ChargeCategory") if "ChargeCategory" in columns else "Usage"
        if category != "Usage":  # purchases, tax, credits, adjustments: not usage costflux sees
            kind = category or "(none)"
            left_out[kind] = _add(left_out.get(kind, Decimal(0)), cost)
            continue
        # costflux's own export: only its token rows are what a provider bills (its GPU and
        # other-cost rows are not in costflux's tokenCostExact either).
        component = cell("x_CostComponent") if "x_CostComponent" in columns else "tokens"
        if component and component != "tokens":
            kind = f"x_CostComponent {component}"
            left_out[kind] = _add(left_out.get(kind, Decimal(0)), cost)
            continue
        period = _period_of(start, end)
        periods.setdefault(period, at)
        lines.append(ProviderLine(period, _focus_model(cell, columns, at),
                                  _focus_project(cell, columns, project_tag, at), cost))
    notes = [f"compared the FOCUS column {cost_column}"]
    if left_out:
        parts = ", ".join(f"{kind} {_exact_dollars(amount)}"
                          for kind, amount in sorted(left_out.items()))
        notes.append(f"left out the rows that are not token usage ({parts})")
    return _report(source, "focus", lines, periods, notes)


def _focus_model(cell: Cell, columns: Mapping[str, int], at: str) -> str | None:
    if "x_Model" in columns and cell("x_Model"):
        return str(cell("x_Model"))
    if "SkuPriceDetails" in columns and cell("SkuPriceDetails"):
        details = _json_object(cell("SkuPriceDetails"), f"{at}, column SkuPriceDetails")
        if isinstance(details.get("ModelId"), str) and details["ModelId"]:
            return str(details["ModelId"])
    if "ResourceId" in columns and cell("ResourceId"):
        return str(cell("ResourceId"))
    return None


def _focus_project(cell: Cell, columns: Mapping[str, int], tag: str, at: str) -> str | None:
    if "x_Project" in columns and cell("x_Project"):
        return str(cell("x_Project"))
    if "Tags" in columns and cell("Tags"):
        value = _json_object(cell("Tags"), f"{at}, column Tags").get(tag)
        if isinstance(value, str) and value:
            return value
    return None


Cell = Callable[[str], str]


def _cells(row: list[str], columns: Mapping[str, int], at: str, *, fold: bool) -> Cell:
    """The row's cell of a column (by its name; case-insensitive when ``fold``), stripped."""
    def cell(name: str) -> str:
        index = columns[name.lower() if fold else name]
        if index >= len(row):
            raise ReportError(f"{at}: the row has {len(row)} cells, fewer than the header's "
                              f"(no {name}); check the row's commas and quotes")
        return row[index].strip()
    return cell


# ----------------------------------------------------------------------------- helpers


def _report(source: str, form: str, lines: list[ProviderLine], periods: Mapping[Period, str],
            notes: Sequence[str]) -> ProviderReport:
    _check_overlaps(periods, source)
    covered = set(periods)
    if covered and all(p.is_day for p in covered):  # a report of days covers every day between
        first = min(p.start_ms for p in covered)
        last = max(p.start_ms for p in covered)
        covered |= {Period(day, day + DAY_MS) for day in range(first, last + DAY_MS, DAY_MS)}
    return ProviderReport(source, form, tuple(lines), frozenset(covered), tuple(notes))


class _Buckets:
    """The buckets of a JSON report seen so far: a bucket twice means overlapping pages."""

    def __init__(self) -> None:
        self.seen: dict[Period, str] = {}
        self.periods: dict[Period, str] = {}

    def period(self, start_ms: int, end_ms: int, at: str) -> Period:
        """The comparison period of the bucket [start, end) found at ``at``."""
        if end_ms <= start_ms:
            raise ReportError(f"{at}: the bucket ends before it starts")
        bucket = Period(start_ms, end_ms)
        if bucket in self.seen:
            raise ReportError(f"{at}: bucket {bucket.label} appears twice (also at "
                              f"{self.seen[bucket].partition(': ')[2]}); the pages overlap: pass "
                              "each page once")
        self.seen[bucket] = at
        period = _period_of(start_ms, end_ms)
        self.periods.setdefault(period, at)
        return period


def _check_overlaps(periods: Mapping[Period, str], source: str) -> None:
    """Reject a report whose comparison periods overlap (e.g. a monthly row and a daily row):
    costflux's cost would count twice."""
    spans = sorted({_period_of(p.start_ms, p.end_ms) for p in periods})
    for before, after in zip(spans, spans[1:], strict=False):
        if after.start_ms < before.end_ms:
            where = periods.get(after) or periods.get(before) or source
            raise ReportError(f"{where}: period {after.label} overlaps {before.label}; "
                              "export the report at one granularity (e.g. daily)")


def _period_of(start_ms: int, end_ms: int) -> Period:
    day = Period.day_of(start_ms)
    return day if end_ms <= day.end_ms else Period(start_ms, end_ms)


def _more_pages_note(pages: list[tuple[str, dict[str, Any]]], endpoint: str) -> list[str]:
    if pages and pages[-1][1].get("has_more") is True:
        return [f"the last page says has_more: true; later days are not in this file (fetch "
                f"{endpoint} with page=<next_page> and pass all pages as a JSON array or "
                "JSON lines)"]
    return []


def _decimal(value: object, at: str, unit: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ReportError(f"{at}: expected an amount in {unit} (a number or decimal string), "
                          f"got {value!r}")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except InvalidOperation:
        raise ReportError(f"{at}: {value!r} is not a number; write the amount in {unit}, e.g. "
                          "12.345") from None
    if not amount.is_finite():
        raise ReportError(f"{at}: {value!r} is not a finite amount")
    if amount == 0:
        return Decimal(0)  # e.g. 0E-6176, as OpenAI has been seen to send
    if _too_fine(amount):
        raise ReportError(f"{at}: {value!r} has more than {-_FINEST_EXPONENT} decimal places")
    return amount


def _require_usd(currency: object, at: str) -> None:
    if not isinstance(currency, str) or currency.strip().upper() != "USD":
        raise ReportError(f"{at}: currency {currency!r}; costflux prices in USD, so only USD "
                          "reports can be compared")


def _optional_text(value: object, at: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ReportError(f"{at}: expected a string or null, got {value!r}")
    return value


def _unix_seconds(value: object, at: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReportError(f"{at}: expected Unix seconds (an integer), got {value!r}")
    return value * 1000


def _rfc3339(value: object, at: str) -> int:
    if not isinstance(value, str) or not value.strip():
        raise ReportError(f"{at}: expected an RFC 3339 time such as 2025-08-01T00:00:00Z, got "
                          f"{value!r}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ReportError(f"{at}: {value!r} is not an RFC 3339 time; write e.g. "
                          "2025-08-01T00:00:00Z") from None
    return _ms(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _json_object(text: str, at: str) -> dict[str, Any]:
    try:
        value = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{at}: not a JSON object ({exc.msg}): {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise ReportError(f"{at}: expected a JSON object of key-value pairs, got {text[:60]!r}")
    return value


def _ms(moment: datetime) -> int:
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _exact_dollars(amount: Decimal) -> str:
    return f"-${amount.copy_negate():f}" if amount < 0 else f"${amount:f}"


def _too_fine(amount: Decimal) -> bool:
    exponent = amount.as_tuple().exponent
    return isinstance(exponent, int) and amount != 0 and exponent < _FINEST_EXPONENT


def _finite(amount: Decimal, name: str) -> Decimal:
    if not amount.is_finite() or _too_fine(amount):
        raise ValueError(f"row {name!r}: {amount} is not an exact amount")
    return amount


def _add(a: Decimal, b: Decimal) -> Decimal:
    return _EXACT.add(a, b)


def _sum(amounts: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    for amount in amounts:
        total = _EXACT.add(total, amount)
    return total


# ----------------------------------------------------------------------------- costflux's side


def plan_queries(periods: Iterable[Period], by_project: bool) -> list[AllocationQuery]:
    """The allocation queries covering ``periods``: runs of consecutive days as one query with
    ``step=1d`` (at most a month each), any other period as a query of its own."""
    aggregate = "label:project,model" if by_project else "model"
    days = sorted(p for p in set(periods) if p.is_day)
    others = sorted(p for p in set(periods) if not p.is_day)
    runs: list[list[Period]] = []
    for day in days:
        if runs and runs[-1][-1].end_ms == day.start_ms and len(runs[-1]) < _DAYS_PER_QUERY:
            runs[-1].append(day)
        else:
            runs.append([day])
    queries = [AllocationQuery({"window": Period(run[0].start_ms, run[-1].end_ms).window,
                                "aggregate": aggregate, "step": "1d"}, tuple(run))
               for run in runs]
    queries += [AllocationQuery({"window": p.window, "aggregate": aggregate}, (p,))
                for p in others]
    return queries


def costflux_costs(answers: Iterable[tuple[AllocationQuery, Sequence[object]]],
                   by_project: bool) -> CostfluxCosts:
    """costflux's cost per (period, model, project) from each query's answer (the API's
    ``data``): ``tokenCostExact`` (token cost after negotiated discounts: what a provider
    bills), else ``totalCostExact``, counted in ``fallback_rows``."""
    side = CostfluxCosts()
    for query, sets in answers:
        stepped = "step" in query.params
        if (len(sets) != len(query.periods)) if stepped else (len(sets) > 1):
            raise ValueError(f"the worker answered {len(sets)} sets for {dict(query.params)}, "
                             f"expected {len(query.periods) if stepped else 'at most 1'}")
        for period, allocation_set in zip(query.periods, sets, strict=False):
            if not isinstance(allocation_set, Mapping):
                raise ValueError(f"unexpected allocation set {allocation_set!r}")
            for row in allocation_set.values():
                _add_allocation(side, period, row, by_project)
    return side


def _add_allocation(side: CostfluxCosts, period: Period, row: object, by_project: bool) -> None:
    if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
        raise ValueError(f"unexpected allocation row {row!r}")
    name = str(row["name"])
    if by_project:
        project, _, model = name.partition("/")  # models may hold '/', projects rarely do
        key: tuple[Period, str, str | None] = (period, model, project)
    else:
        model, project = name, None
        key = (period, name, None)
    if model == _IDLE or project == _IDLE:
        return
    start = row.get("start")
    if period.is_day and isinstance(start, str) and _rfc3339(start, "start") != period.start_ms:
        raise ValueError(f"the worker answered {start} for the day {period.label}")
    exact = row.get("tokenCostExact")
    if exact is None:
        exact = row.get("totalCostExact")
        side.fallback_rows += 1
    if isinstance(exact, bool) or not isinstance(exact, str | int):
        raise ValueError(f"row {name!r}: expected an exact decimal string, got {exact!r}")
    side.costs[key] = _add(side.costs.get(key, Decimal(0)), _finite(Decimal(exact), name))


# ----------------------------------------------------------------------------- comparison


def reconcile(report: ProviderReport, costflux: CostfluxCosts, *,
              tolerance_pct: Decimal = Decimal("0.5"), min_difference: Decimal = Decimal(0),
              model_map: Mapping[str, str] | None = None,
              project_map: Mapping[str, str] | None = None,
              models: Sequence[str] = ()) -> Reconciliation:
    """Both sides per (period, model, project) of the report's periods; a key on one side only
    is a row too (costflux-only keys with no cost are left out). ``models``: fnmatch patterns
    of the models to compare (after ``model_map``), all when empty."""
    model_map, project_map = model_map or {}, project_map or {}
    by_model, by_project = report.by_model, report.by_project

    def wanted(model: str) -> bool:
        return not models or any(fnmatchcase(model, pattern) for pattern in models)

    provider: dict[tuple[Period, str, str | None], Decimal] = {}
    for line in report.lines:
        model = ALL_MODELS
        if by_model:
            model = model_map.get(line.model or UNATTRIBUTED, line.model or UNATTRIBUTED)
        if by_model and not wanted(model):
            continue
        project = None
        if by_project:
            project = project_map.get(line.project or UNALLOCATED, line.project or UNALLOCATED)
        key = (line.period, model, project)
        provider[key] = _add(provider.get(key, Decimal(0)), line.cost)
    ours: dict[tuple[Period, str, str | None], Decimal] = {}
    for (period, model, project), cost in costflux.costs.items():
        if period not in report.periods or not wanted(model):
            continue
        key = (period, model if by_model else ALL_MODELS, project if by_project else None)
        ours[key] = _add(ours.get(key, Decimal(0)), cost)
    rows = tuple(
        ReconciledRow(key[0], key[1], key[2], ours.get(key, Decimal(0)),
                      provider.get(key, Decimal(0)), key in ours, key in provider)
        for key in sorted(set(provider) | set(ours), key=lambda k: (k[0], k[1], k[2] or ""))
        if key in provider or ours[key] != 0
    )
    notes = list(report.notes)
    if not by_model:
        notes.append("the report has no per-model figures: each day is compared with all of "
                     "costflux's models" + (" matching --model" if models else ""))
    field_name = "tokenCostExact"
    if costflux.fallback_rows:
        field_name = "totalCostExact"
        notes.append(f"the worker serves no tokenCostExact ({costflux.fallback_rows} rows, an "
                     "older costflux): compared totalCostExact, which adds GPU and idle cost")
    return Reconciliation(report.source, report.format, rows, tolerance_pct, min_difference,
                          by_project, field_name, tuple(notes))


# ----------------------------------------------------------------------------- rendering


def render(result: Reconciliation, form: str) -> str:
    """The reconciliation as a table, CSV (exact figures) or JSON (exact figures, notes)."""
    if form == "json":
        return _json(result) + "\n"
    if form == "csv":
        return _csv(result)
    return _table(result)


def _row_cells(row: ReconciledRow, result: Reconciliation, exact: bool) -> list[str]:
    money = _plain if exact else _money
    percent = row.percent
    percent_text = "inf" if percent is None else _plain(percent) if exact else _percent(percent)
    cells = [row.period.label, row.model]
    if result.by_project:
        cells.append(row.project or "")
    return [*cells, money(row.costflux), money(row.provider), money(row.difference),
            percent_text, row.status(result.tolerance_pct, result.min_difference)]


def _header(result: Reconciliation) -> list[str]:
    return ["day", "model", *(["project"] if result.by_project else []), "costflux",
            "provider", "difference", "percent", "status"]


def _table(result: Reconciliation) -> str:
    header = ["Day", "Model", *(["Project"] if result.by_project else []), "costflux",
              "Provider", "Difference", "%", "Status"]
    cells = [_row_cells(row, result, exact=False) for row in result.rows]
    total = result.total()
    total_cells = _row_cells(total, result, exact=False)
    total_cells[0], total_cells[1], total_cells[-1] = "Total", "", ""
    cells.append(total_cells)
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    text_columns = 3 if result.by_project else 2
    lines = [f"Reconciliation of {result.source} ({result.format}) with costflux "
             f"{result.costflux_field}; tolerance {result.tolerance_pct} %"]
    for row in [header, *cells]:
        lines.append("  ".join(
            f"{c:<{w}}" if i < text_columns or i == len(row) - 1 else f"{c:>{w}}"
            for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    count = len(result.mismatches)
    lines.append(f"{count} of {len(result.rows)} rows over the tolerance" if count
                 else f"all {len(result.rows)} rows within the tolerance")
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _csv(result: Reconciliation) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_header(result))
    for row in result.rows:
        writer.writerow(_row_cells(row, result, exact=True))
    return out.getvalue()


def _json(result: Reconciliation) -> str:
    def document(row: ReconciledRow) -> dict[str, object]:
        percent = row.percent
        return {
            "day": row.period.label, "start": _iso(row.period.start_ms),
            "end": _iso(row.period.end_ms), "model": row.model,
            **({"project": row.project} if result.by_project else {}),
            "costflux": _plain(row.costflux), "provider": _plain(row.provider),
            "difference": _plain(row.difference),
            "percent": "inf" if percent is None else _plain(percent),
            "status": row.status(result.tolerance_pct, result.min_difference),
            "inCostflux": row.in_costflux, "inProvider": row.in_provider,
        }

    total = result.total()
    return json.dumps({
        "report": result.source, "format": result.format,
        "costfluxField": result.costflux_field,
        "tolerancePercent": _plain(result.tolerance_pct),
        "minDifference": _plain(result.min_difference),
        "rows": [document(row) for row in result.rows],
        "total": {"costflux": _plain(total.costflux), "provider": _plain(total.provider),
                  "difference": _plain(total.difference),
                  "percent": "inf" if total.percent is None else _plain(total.percent)},
        "mismatches": len(result.mismatches),
        "notes": list(result.notes),
    }, indent=2)


def _plain(amount: Decimal) -> str:
    """Every digit, never an exponent: ``0E-12`` is ``0.000000000000``."""
    return f"{amount:f}"


def _percent(percent: Decimal) -> str:
    """To 0.01, half to even, signed unless zero."""
    shown = percent.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    return "0.00" if shown == 0 else f"{shown:+}"


def _money(amount: Decimal) -> str:
    """Dollars to the micro-dollar, half to even, with thousands separators."""
    value = amount.quantize(Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
    return f"-${value.copy_negate():,}" if value < 0 else f"${value:,}"

