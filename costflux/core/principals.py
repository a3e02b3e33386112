"""Allocation by API key and end user (``aggregate=api_key``, ``aggregate=end_user``). Pure.

The windows are not keyed by these labels: ingest rolls each one up per UTC day instead, one
hash per label and day, value -> ``UsageSums`` (costflux.core.spend, streams.cost_store). So
these aggregates answer in whole UTC days, as Kubecost and OpenCost answer from daily data,
and every window is read as the whole days that hold it (the answer's ``window`` says which):

- ``Nd`` and ``Nw`` are OpenCost's "past N days": today, midnight to midnight UTC, and the
  N-1 whole days before it (OpenCost rounds both ends of such a window forward to midnight);
  ``1d`` is today, ``7d`` today and the 6 days before.
- The keywords are UTC calendar days already; ``today``, ``week`` and ``month`` run to the end
  of the current day, as in OpenCost (the rest of the day holds nothing yet).
- Anything else — ``start,end``, ``24h``, ``90m`` — is widened to the days holding it: its
  start to the midnight before, its end to the midnight after. A day's roll-up cannot be cut;
  refusing would fail every client that sends exact instants, and widening keeps every cost
  asked for and says so in ``window``.
- ``step`` must be whole days (``1d``, ``7d``): a step cannot be widened without its sets
  overlapping, so any other is refused, saying why.

Each row carries the fields of every other aggregate (costflux.core.allocation). A key's row
is its usage: token cost, tokens, requests, savings and the whole bill. GPU cost is not kept
per key, so ``gpuCost`` of those rows is 0, and what no key or user accounts for — usage that
carried no such label, and the GPU cost of the windows — is the ``__unallocated__`` row (idle
GPU cost the ``__idle__`` row, unless shared): the set adds up to the same total as any other
aggregate of the same window. Usage of a day whose per-key roll-up has expired
(``COSTFLUX_PRINCIPAL_RETENTION_DAYS``) is therefore ``__unallocated__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from costflux.core.allocation import (
    UNALLOCATED,
    WINDOW_KEYWORDS,
    AllocationOptions,
    AllocationQueryError,
    GroupCost,
    TimeRange,
    group_costs,
    parse_window,
)
from costflux.core.budgets import PRINCIPAL_KEYS
from costflux.core.rows import UsageSums, WindowRows
from costflux.core.spend import DAY_MS
from costflux.core.windows import duration_ms

__all__ = ["day_starts", "day_step", "parse_day_window", "principal_aggregate",
           "principal_costs"]

def principal_aggregate(text: str) -> str | None:
    """The principal label ``text`` names alone (``api_key``, ``end_user``, also written
    ``label:api_key``), or None for the windows' dimensions (costflux.core.allocation's
    ``parse_aggregate``, which refuses a principal combined with them).

    >>> principal_aggregate(" label:end_user"), principal_aggregate("model")
    ('end_user', None)
    """
    name = text.strip().removeprefix("label:")
    return name if name in PRINCIPAL_KEYS else None


def parse_day_window(text: str, now_ms: int) -> TimeRange:
    """The ``window`` parameter as whole UTC days (see the module's docstring), "now" being
    ``now_ms``.

    >>> day, hour = 86_400_000, 3_600_000
    >>> parse_day_window("7d", 20 * day + hour) == TimeRange(14 * day, 21 * day)
    True
    >>> parse_day_window("24h", 20 * day + hour) == TimeRange(19 * day, 21 * day)
    True
    """
    text = text.strip()
    length = duration_ms(text)
    whole_days = text.lower() in WINDOW_KEYWORDS or (length and text[-1] in "dw")
    span = parse_window(text, now_ms, DAY_MS // 1000 if whole_days else 1)
    return TimeRange(span.start_ms - span.start_ms % DAY_MS, -(-span.end_ms // DAY_MS) * DAY_MS)


def day_step(step_ms: int | None) -> int | None:
    """``step_ms`` (None: no step) if it is whole days."""
    if step_ms is not None and step_ms % DAY_MS:
        raise AllocationQueryError(
            "api_key and end_user rows are kept per UTC day: step must be whole days, e.g. 1d")
    return step_ms


def day_starts(span: TimeRange) -> list[int]:
    """The start of every UTC day in ``span`` (whole days)."""
    return list(range(span.start_ms, span.end_ms, DAY_MS))


def principal_costs(
    days: Iterable[Mapping[str, UsageSums]],
    windows_rows: Iterable[WindowRows],
    options: AllocationOptions,
) -> dict[tuple[str, ...], GroupCost]:
    """Each label value's cost over ``days`` (its roll-up of each day in the span), and what
    the windows tiling the same span hold beyond them as ``UNALLOCATED`` (usage without the
    label, and GPU cost; unshared idle GPU cost is ``IDLE_KEY``'s).

    Where the windows hold less usage than the days (windows kept fewer days than the
    roll-up), only the GPU cost is left over: the remainder of usage cannot be told.
    """
    groups: dict[tuple[str, ...], GroupCost] = {}
    for day in days:
        for value, sums in day.items():
            groups.setdefault((value,), GroupCost()).add_usage(sums)
    whole = group_costs(windows_rows, (), options)
    rest = whole.pop((), GroupCost())
    for group in groups.values():
        rest.add(group, -1)
    if rest.negative:
        rest = GroupCost(gpu_units=rest.gpu_units, idle_units=rest.idle_units)
    if rest != GroupCost():
        groups.setdefault((UNALLOCATED,), GroupCost()).add(rest)
    return groups | whole
