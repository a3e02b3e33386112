"""Allocation queries: which windows cover a time range, and cost grouped by dimensions.

The answer has the Kubecost/OpenCost ``/model/allocation`` shape, with token fields added,
and self-hosted GPU cost joined in: a model's GPU cost in a window goes to the teams that
used the model in that window (``gpuCost``), its idle part shared or as an ``__idle__`` row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from costflux.core.bill import BILL_FIELDS
from costflux.core.budgets import PRINCIPAL_KEYS
from costflux.core.errors import InputError
from costflux.core.gpu import (
    UNITS_PER_PICO,
    cost_units,
    price_of_rates,
    split_in_proportion,
    units_to_dollars,
)
from costflux.core.money import PICO_PER_DOLLAR
from costflux.core.rows import DIMENSIONS, DimKey, GpuDims, GpuSums, UsageSums, WindowRows
from costflux.core.windows import duration_ms

__all__ = ["IDLE", "IDLE_KEY", "MAX_STEPS", "UNALLOCATED", "WINDOW_KEYWORDS",
           "AllocationOptions", "AllocationQueryError", "GroupCost", "TimeRange", "allocate",
           "allocation_set", "cover", "empty_allocation", "group_costs", "iso_window",
           "parse_aggregate", "parse_step", "parse_window", "split_steps"]

UNALLOCATED = "__unallocated__"
#: The row idle GPU cost goes to unless it is shared (OpenCost's shareIdle=false).
IDLE = "__idle__"


class AllocationQueryError(InputError):
    """The query's window or aggregate parameter is invalid; the message says what works."""


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A half-open event-time range [start_ms, end_ms), aligned to the finest window."""

    start_ms: int
    end_ms: int


#: Kubecost's window keywords: UTC calendar days, weeks (from Sunday) and months.
WINDOW_KEYWORDS = ("today", "yesterday", "week", "lastweek", "month", "lastmonth")
#: The most allocation sets one stepped query may answer with.
MAX_STEPS = 1000
_DAY_MS = 86_400_000
_WINDOW_FORMS = (
    f"window must be one of {', '.join(WINDOW_KEYWORDS)}; a duration such as 24h, 7d or 90m; "
    "or 'start,end' in RFC 3339 (e.g. 2024-05-01T00:00:00Z,2024-05-02T00:00:00Z) "
    "or in Unix seconds"
)


def parse_window(text: str, now_ms: int, finest_s: int) -> TimeRange:
    """A keyword, a duration ('24h', '7d', '90m', '2w'), or 'start,end' (RFC 3339 or Unix s).

    Relative windows end where the finest window holding ``now_ms`` ends, so the newest event
    is always inside; keywords are UTC calendar ranges as in Kubecost: ``today`` from midnight,
    ``yesterday`` the whole previous day, ``week`` from Sunday 00:00, ``lastweek`` the whole
    previous Sunday-to-Sunday week, ``month`` from the 1st, ``lastmonth`` the whole previous
    month. Every range is widened to the finest window (start floored, end ceiled).
    """
    finest_ms = finest_s * 1000
    text = text.strip()
    end_now = now_ms - now_ms % finest_ms + finest_ms
    if text.lower() in WINDOW_KEYWORDS:
        start, end = _calendar_range(text.lower(), now_ms, end_now)
        return TimeRange(start - start % finest_ms, _ceil(end, finest_ms))
    length = duration_ms(text)
    if length:
        return TimeRange(end_now - length, end_now)
    parts = text.split(",")
    if len(parts) != 2:
        raise AllocationQueryError(f"invalid window {text!r}: {_WINDOW_FORMS}")
    start, end = (_parse_instant(p) for p in parts)
    if end <= start:
        raise AllocationQueryError("window end must be after its start")
    return TimeRange(start - start % finest_ms, _ceil(end, finest_ms))


def _calendar_range(keyword: str, now_ms: int, end_now: int) -> tuple[int, int]:
    midnight = now_ms - now_ms % _DAY_MS
    today = datetime.fromtimestamp(midnight / 1000, tz=UTC)
    sunday = midnight - (today.weekday() + 1) % 7 * _DAY_MS  # weekday(): Monday is 0
    first = today.replace(day=1)
    month_start = int(first.timestamp()) * 1000
    previous = (first - timedelta(days=1)).replace(day=1)
    ranges = {
        "today": (midnight, end_now),
        "yesterday": (midnight - _DAY_MS, midnight),
        "week": (sunday, end_now),
        "lastweek": (sunday - 7 * _DAY_MS, sunday),
        "month": (month_start, end_now),
        "lastmonth": (int(previous.timestamp()) * 1000, month_start),
    }
    return ranges[keyword]


def parse_step(text: str | None, finest_s: int) -> int | None:
    """The ``step`` parameter in milliseconds (None when absent): a duration that is a whole
    number of the finest window."""
    if text is None or not text.strip():
        return None
    finest_ms = finest_s * 1000
    step = duration_ms(text)
    if not step or step % finest_ms:
        raise AllocationQueryError(
            f"invalid step {text!r}: step must be a duration such as 1h or 1d that is a whole "
            f"number of the finest window ({finest_s}s)"
        )
    return step


def split_steps(span: TimeRange, step_ms: int) -> list[TimeRange]:
    """``span`` cut at the multiples of ``step_ms`` since the epoch (UTC hours, days...), as
    Kubecost's sets are: the first and last steps are clipped to the span."""
    first = span.start_ms - span.start_ms % step_ms
    if _ceil(span.end_ms, step_ms) - first > MAX_STEPS * step_ms:
        raise AllocationQueryError(
            f"window and step give more than {MAX_STEPS} steps; use a larger step"
        )
    return [
        TimeRange(max(begin, span.start_ms), min(begin + step_ms, span.end_ms))
        for begin in range(first, span.end_ms, step_ms)
    ]


def _ceil(ms: int, step: int) -> int:
    return -(-ms // step) * step


def _parse_instant(text: str) -> int:
    if text.strip().isdigit():
        return int(text) * 1000  # Unix seconds, as Kubecost accepts
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AllocationQueryError(
            f"invalid window: {text.strip()!r} is not RFC 3339 (e.g. 2024-05-01T00:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def cover(span: TimeRange, sizes_s: Iterable[int]) -> list[tuple[int, int]]:
    """Fewest windows (size_s, start_ms) that exactly tile ``span``, largest sizes first.

    Every event lies in exactly one window of each size, so summing the tiles is exact.
    """
    sizes_ms = sorted((s * 1000 for s in sizes_s), reverse=True)
    tiles: list[tuple[int, int]] = []
    position = span.start_ms
    while position < span.end_ms:
        for size_ms in sizes_ms:
            if position % size_ms == 0 and position + size_ms <= span.end_ms:
                tiles.append((size_ms // 1000, position))
                position += size_ms
                break
        else:
            raise AllocationQueryError("window is not aligned to the finest window size")
    return tiles


#: Kubecost aggregations that costflux's rows do not carry (they are keyed by DIMENSIONS).
_UNTRACKED = ("node", "controller", "controllerKind", "service", "pod", "container",
              "statefulset", "daemonset", "job")
#: The aggregate values, as the error messages list them (``label:`` works for any dimension).
#: ``api_key`` and ``end_user`` stand alone: costflux.core.principals answers them.
_AGGREGATES = ("model", "namespace", "deployment", "cluster", "label:team", "label:project",
               "label:app", *PRINCIPAL_KEYS)


def parse_aggregate(text: str) -> list[int]:
    """'model', 'deployment', 'label:team', comma separated -> indexes into DIMENSIONS."""
    indexes = []
    valid = ", ".join(_AGGREGATES)
    for part in (p.strip() for p in text.split(",")):
        name = part.removeprefix("label:")
        if name in PRINCIPAL_KEYS:
            raise AllocationQueryError(
                f"aggregate by {name} alone: its rows are kept per {name} and UTC day, apart "
                f"from the other dimensions ({', '.join(DIMENSIONS)}), so it does not combine "
                "with them"
            )
        if part in _UNTRACKED:
            raise AllocationQueryError(
                f"cannot aggregate by {part!r}: costflux does not record {part} for LLM usage "
                f"(its cost rows are keyed by {', '.join(DIMENSIONS[:-1])} and "
                f"{DIMENSIONS[-1]}); use one of: {valid}"
            )
        if name not in DIMENSIONS:
            raise AllocationQueryError(f"cannot aggregate by {part!r}; use one of: {valid}")
        indexes.append(DIMENSIONS.index(name))
    return indexes


def _tokens(sums: UsageSums) -> int:
    return sums.input_tokens + sums.output_tokens


def _requests(sums: UsageSums) -> int:
    # Only the requests the model served used its GPUs: semantic cache hits did not.
    return sums.served_requests


def _gpu_ms(sums: UsageSums) -> int:
    return sums.gpu_ms


_WEIGHT: dict[str, Callable[[UsageSums], int]] = {
    "tokens": _tokens, "requests": _requests, "gpu_seconds": _gpu_ms,
}
GPU_WEIGHTS = tuple(_WEIGHT)


@dataclass(slots=True)
class GroupCost:
    """One allocation row being summed: token cost in pico-dollars, GPU cost in GPU units."""

    token_pico: int = 0
    gpu_units: int = 0  # busy GPU time at its price
    idle_units: int = 0  # idle GPU time at its price
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    requests: int = 0
    cache_saving_pico: int = 0  # what the prompt cache saved on the token cost
    semantic_cache_hits: int = 0  # requests the semantic cache answered (in ``requests``)
    semantic_saving_pico: int = 0  # what those requests would have cost
    #: The whole bill's sums (``costflux.core.bill.BILL_FIELDS``), by name.
    billed: Counter[str] = field(default_factory=Counter)

    @property
    def total_units(self) -> int:
        """Token, busy and idle GPU cost together, exactly, in GPU cost units."""
        return self.token_pico * UNITS_PER_PICO + self.gpu_units + self.idle_units

    def add(self, other: GroupCost, sign: int = 1) -> None:
        """Add ``other`` (``sign=-1``: take it away) field by field."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))
        if sign < 0:
            self.billed.subtract(other.billed)
        else:
            self.billed.update(other.billed)

    def add_usage(self, sums: UsageSums) -> None:
        """Add one usage row's token cost and counts (GPU cost is shared out apart)."""
        self.token_pico += sums.cost_pico
        self.input_tokens += sums.input_tokens
        self.output_tokens += sums.output_tokens
        self.cached_input_tokens += sums.cached_input_tokens
        self.requests += sums.requests
        self.cache_saving_pico += sums.cache_saving_pico
        self.semantic_cache_hits += sums.semantic_cache_hits
        self.semantic_saving_pico += sums.semantic_saving_pico
        billed = sums[-len(BILL_FIELDS):]
        if any(billed):
            self.billed.update(dict(zip(BILL_FIELDS, billed, strict=True)))

    @property
    def negative(self) -> bool:
        """Whether any sum is below zero (a difference of groups that did not contain each
        other)."""
        return (any(getattr(self, name) < 0 for name in _COUNTS)
                or any(value < 0 for value in self.billed.values()))


#: GroupCost's integer sums (all but ``billed``).
_COUNTS = tuple(name for name in GroupCost.__dataclass_fields__ if name != "billed")


#: The group of idle GPU cost that is not shared (its name in an answer is ``IDLE``).
IDLE_KEY = (IDLE,)


@dataclass(frozen=True, slots=True)
class AllocationOptions:
    """How GPU cost is shared: by ``tokens``, ``requests`` or the events' own ``gpu_seconds``;
    idle shared among the same users or as an ``__idle__`` row."""

    share_idle: bool = False
    weight: str = "tokens"

    def __post_init__(self) -> None:
        if self.weight not in GPU_WEIGHTS:
            raise AllocationQueryError(
                f"cannot share GPU cost by {self.weight!r}; use one of: {', '.join(GPU_WEIGHTS)}"
            )


def allocate(
    windows_rows: Iterable[WindowRows],
    group_by: list[int],
    span: TimeRange,
    options: AllocationOptions = AllocationOptions(),
) -> dict[str, dict[str, object]]:
    """Group the rows of every covering window by the chosen dimensions, Kubecost-shaped.

    Within each window, a model's GPU cost is split among the usage rows of that model in
    proportion to their weight (exactly: the parts sum to the whole); GPU time of a model
    nobody used in the window is charged to the GPU's own labels (team, namespace).
    """
    return allocation_set(group_costs(windows_rows, group_by, options), span)


def allocation_set(
    groups: Mapping[tuple[str, ...], GroupCost], span: TimeRange
) -> dict[str, dict[str, object]]:
    """One Kubecost allocation set: a row per group, named by its values joined with "/"."""
    window = iso_window(span)
    return {
        name: _allocation(name, group, window)
        for name, group in sorted(("/".join(key), group) for key, group in groups.items())
    }


def empty_allocation(name: str, span: TimeRange) -> dict[str, object]:
    """A row of ``allocate``'s shape with no usage (for costs that fall to no group)."""
    return _allocation(name, GroupCost(), iso_window(span))


def group_costs(
    windows_rows: Iterable[WindowRows],
    group_by: Sequence[int],
    options: AllocationOptions = AllocationOptions(),
) -> dict[tuple[str, ...], GroupCost]:
    """Exact cost of every group (its values of ``group_by``, ``UNALLOCATED`` for empty ones);
    unshared idle GPU cost is the ``IDLE_KEY`` group."""
    groups: dict[tuple[str, ...], GroupCost] = {}

    def group_of(dims: Sequence[str]) -> GroupCost:
        key = tuple(dims[i] or UNALLOCATED for i in group_by)
        return groups.setdefault(key, GroupCost())

    for rows in windows_rows:
        users_by_model: dict[str, list[tuple[DimKey, UsageSums]]] = {}
        gpu_by_model: dict[str, list[tuple[GpuDims, GpuSums]]] = {}
        for gpu_dims, gpu_sums in sorted(rows.gpu.items()):  # sorted: splits are deterministic
            gpu_by_model.setdefault(gpu_dims[4], []).append((gpu_dims, gpu_sums))
        for dims, sums in sorted(rows.usage.items()):
            users_by_model.setdefault(dims[0], []).append((dims, sums))
            group_of(dims).add_usage(sums)
        for model, gpu_rows in gpu_by_model.items():
            users = users_by_model.get(model) if model else None
            if users:
                _share_among_users(gpu_rows, users, group_of, groups, options)
            else:
                _charge_to_gpu_labels(gpu_rows, group_of, groups, options)
    return groups


def _share_among_users(
    gpu_rows: list[tuple[GpuDims, GpuSums]],
    users: list[tuple[DimKey, UsageSums]],
    group_of: Callable[[Sequence[str]], GroupCost],
    groups: dict[tuple[str, ...], GroupCost],
    options: AllocationOptions,
) -> None:
    busy = sum(_busy_units(dims, sums) for dims, sums in gpu_rows)
    idle = sum(_idle_units(dims, sums) for dims, sums in gpu_rows)
    weight_of = _WEIGHT[options.weight]
    weights = [weight_of(sums) for _, sums in users]
    user_groups = [group_of(dims) for dims, _ in users]
    for group, part in zip(user_groups, split_in_proportion(busy, weights), strict=True):
        group.gpu_units += part
    if options.share_idle:
        for group, part in zip(user_groups, split_in_proportion(idle, weights), strict=True):
            group.idle_units += part
    else:
        groups.setdefault(IDLE_KEY, GroupCost()).idle_units += idle


def _charge_to_gpu_labels(
    gpu_rows: list[tuple[GpuDims, GpuSums]],
    group_of: Callable[[Sequence[str]], GroupCost],
    groups: dict[tuple[str, ...], GroupCost],
    options: AllocationOptions,
) -> None:
    for dims, sums in gpu_rows:
        _node, _type, _tier, namespace, model, team, _rates = dims
        group = group_of((model, team, "", "", namespace, "", ""))  # in DIMENSIONS order
        group.gpu_units += _busy_units(dims, sums)
        idle_group = group if options.share_idle else groups.setdefault(IDLE_KEY, GroupCost())
        idle_group.idle_units += _idle_units(dims, sums)


def _busy_units(dims: GpuDims, sums: GpuSums) -> int:
    return cost_units(sums.gpu_ms - sums.idle_ms, price_of_rates(dims[6]), dims[2])


def _idle_units(dims: GpuDims, sums: GpuSums) -> int:
    return cost_units(sums.idle_ms, price_of_rates(dims[6]), dims[2])


def _allocation(name: str, group: GroupCost, window: dict[str, str]) -> dict[str, object]:
    token_cost = Decimal(group.token_pico) / PICO_PER_DOLLAR
    cache_savings = Decimal(group.cache_saving_pico) / PICO_PER_DOLLAR
    semantic_savings = Decimal(group.semantic_saving_pico) / PICO_PER_DOLLAR
    gpu_cost = units_to_dollars(group.gpu_units)
    idle_cost = units_to_dollars(group.idle_units)
    total = token_cost + gpu_cost + idle_cost
    tokens = group.input_tokens + group.output_tokens
    return {
        "name": name,
        "window": window,
        "start": window["start"],
        "end": window["end"],
        "totalCost": float(total),
        "tokenCost": float(token_cost),
        "gpuCost": float(gpu_cost),
        "idleCost": float(idle_cost),
        "totalCostExact": _exact(total),
        "inputTokens": group.input_tokens,
        "outputTokens": group.output_tokens,
        "cachedInputTokens": group.cached_input_tokens,
        "requests": group.requests,
        "cacheSavings": float(cache_savings),
        "cacheSavingsExact": _exact(cache_savings),
        "semanticCacheSavings": float(semantic_savings),
        "semanticCacheSavingsExact": _exact(semantic_savings),
        "semanticCacheHits": group.semantic_cache_hits,
        "costPerRequest": float(total / group.requests) if group.requests else 0.0,
        "costPerToken": float(total / tokens) if tokens else 0.0,
        **_whole_bill(group, token_cost, total),
    }


def _whole_bill(group: GroupCost, token_cost: Decimal, total: Decimal) -> dict[str, object]:
    """List and effective cost, the cost of each kind of usage, and the counts of each kind.

    ``totalCost`` is what is paid (``effectiveCost``); ``listCost`` adds back what contracts
    took off. The kinds' costs are at list prices; ``textTokenCost`` is text input, cache
    reads and text output: what the others leave.
    """
    billed = group.billed
    discount = Decimal(billed["contract_discount_pico"]) / PICO_PER_DOLLAR
    parts = {name: Decimal(billed[f"{kind}_cost_pico"]) / PICO_PER_DOLLAR
             for name, kind in _PART_COSTS}
    text = token_cost + discount - sum(parts.values(), Decimal(0))
    row: dict[str, object] = {}
    for name, dollars in (("listCost", total + discount), ("effectiveCost", total),
                          ("contractDiscount", discount), ("tokenCost", token_cost),
                          ("textTokenCost", text), *parts.items()):
        row[name] = float(dollars)
        row[f"{name}Exact"] = _exact(dollars)
    for name, sum_name in _BILLED_COUNTS:
        row[name] = billed[sum_name]
    return row


_PART_COSTS = (("cacheWriteCost", "cache_write"), ("audioCost", "audio"),
               ("imageCost", "image"), ("reasoningCost", "reasoning"),
               ("webSearchCost", "web_search"))
_BILLED_COUNTS = (
    ("cacheWriteInputTokens", "cache_write_input_tokens"),
    ("cacheWrite1hInputTokens", "cache_write_1h_input_tokens"),
    ("audioInputTokens", "audio_input_tokens"), ("imageInputTokens", "image_input_tokens"),
    ("reasoningTokens", "reasoning_tokens"), ("audioOutputTokens", "audio_output_tokens"),
    ("webSearchCalls", "web_search_calls"), ("batchRequests", "batch_requests"),
    ("priorityRequests", "priority_requests"), ("flexRequests", "flex_requests"),
)


def _exact(dollars: Decimal) -> str:
    """Dollars to the pico-dollar (GPU cost can be finer: rounded half to even there)."""
    return f"{dollars.quantize(_PICO_DOLLAR, rounding=ROUND_HALF_EVEN):f}"


_PICO_DOLLAR = Decimal(1).scaleb(-12)


def iso_window(span: TimeRange) -> dict[str, str]:
    """The ``window`` field of an answer: start and end in RFC 3339."""
    return {"start": _iso(span.start_ms), "end": _iso(span.end_ms)}


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
