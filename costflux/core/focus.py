"""FOCUS rows of costflux's costs: the FinOps Open Cost and Usage Specification, version 1.0,
with the columns 1.2 adds and costflux's own ``x_`` columns.

Built from what a worker's API already answered (no I/O here): the allocation sets of a
stepped ``/model/allocation`` query (one set per charge period, grouped by model, team,
project, app and namespace) and, for the periods with GPU cost, ``/model/gpu`` grouped by
model, GPU type and pricing tier.

Every allocation row becomes:

- a **token row** (``x_CostComponent`` ``tokens``): the row's token cost;
- **GPU rows** (``gpu``), one per GPU type and pricing tier the model ran on: the row's
  share of its model's GPU cost (busy time; idle time too when the worker shares it);
  the ``__idle__`` row's unshared idle GPU time becomes ``gpu_idle`` rows;
- **other cost rows**, one per component (``storage``, ``network``, ...): the row's share of
  the monthly amounts in ``other_costs`` (served as ``otherCostsExact``).

Money is exact: every cost is a Decimal read from the API's ``…Exact`` strings, and the
parts of a row add up to it exactly (the GPU part is the total less the token cost, and a
GPU part is split over GPU types with the largest-remainder split in pico-dollars). When the
worker does not serve ``tokenCostExact`` the token and GPU cost of a row cannot be told apart
exactly; such a row stays one ``tokens+gpu`` row. Without ``listCostExact`` and
``effectiveCostExact`` every cost column is ``totalCostExact``; counts the worker does not
serve are 0. Quantities that come from floats (GPU-hours) are rounded to 1e-9.
"""

from __future__ import annotations

import calendar
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import combinations

from costflux.core.errors import InputError
from costflux.core.gpu import split_in_proportion
from costflux.core.money import PICO_PER_DOLLAR, exact_pico

__all__ = [
    "COLUMNS", "COLUMN_KINDS", "FOCUS_VERSION", "GROUP_DIMENSIONS", "LABEL_DIMENSIONS",
    "FocusAccount", "FocusError", "GpuUse", "csv_cells", "focus_rows", "gpu_use",
    "needs_known_values", "split_group_name",
]

FOCUS_VERSION = "1.0"

#: The allocation query's aggregate, in order: a group's name is these values joined by "/".
GROUP_DIMENSIONS = ("model", "team", "project", "app", "namespace")
#: ``aggregate=`` spelling of GROUP_DIMENSIONS.
LABEL_DIMENSIONS = ("model", "label:team", "label:project", "label:app", "namespace")

_IDLE = "__idle__"
_UNALLOCATED = "__unallocated__"
_PICO = Decimal("1e-12")
_QUANTITY = Decimal("1e-9")  # GPU-hours and period hours: 3.6 microseconds
_THOUSAND = Decimal(1000)

#: Column -> kind: ``decimal``, ``datetime``, ``string``, ``json`` (a JSON object in a
#: string) or ``integer``. FOCUS 1.0 columns (with the 1.0 validator's older names of three
#: of them), then the columns FOCUS 1.2 adds, then costflux's ``x_`` columns.
COLUMN_KINDS: dict[str, str] = {
    # FOCUS 1.0, alphabetical as in the specification.
    "AvailabilityZone": "string",
    "BilledCost": "decimal",
    "BillingAccountId": "string",
    "BillingAccountName": "string",
    "BillingCurrency": "string",
    "BillingPeriodEnd": "datetime",
    "BillingPeriodStart": "datetime",
    "ChargeCategory": "string",
    "ChargeClass": "string",
    "ChargeDescription": "string",
    "ChargeFrequency": "string",
    "ChargePeriodEnd": "datetime",
    "ChargePeriodStart": "datetime",
    "CommitmentDiscountCategory": "string",
    "CommitmentDiscountId": "string",
    "CommitmentDiscountName": "string",
    "CommitmentDiscountStatus": "string",
    "CommitmentDiscountType": "string",
    "ConsumedQuantity": "decimal",
    "ConsumedUnit": "string",
    "ContractedCost": "decimal",
    "ContractedUnitPrice": "decimal",
    "EffectiveCost": "decimal",
    "InvoiceIssuerName": "string",
    "ListCost": "decimal",
    "ListUnitPrice": "decimal",
    "PricingCategory": "string",
    "PricingQuantity": "decimal",
    "PricingUnit": "string",
    "ProviderName": "string",
    "PublisherName": "string",
    "RegionId": "string",
    "RegionName": "string",
    "ResourceId": "string",
    "ResourceName": "string",
    "ResourceType": "string",
    "ServiceCategory": "string",
    "ServiceName": "string",
    "SkuId": "string",
    "SkuPriceId": "string",
    "SubAccountId": "string",
    "SubAccountName": "string",
    "Tags": "json",
    # The 1.0 text says "The InvoiceIssuer (Provider, Publisher) column MUST be present" and
    # focus-validator 1.0.0 checks those names; the Column IDs are the ...Name ones above.
    "InvoiceIssuer": "string",
    "Provider": "string",
    "Publisher": "string",
    # FOCUS 1.2's columns that 1.0 lacks (1.1: ServiceSubcategory, SkuMeter, SkuPriceDetails,
    # CapacityReservation*, CommitmentDiscountQuantity/Unit; 1.2: the rest). Those costflux has
    # nothing for are null: InvoiceId (no invoices), capacity reservations, commitments.
    "BillingAccountType": "string",
    "CapacityReservationId": "string",
    "CapacityReservationStatus": "string",
    "CommitmentDiscountQuantity": "decimal",
    "CommitmentDiscountUnit": "string",
    "InvoiceId": "string",
    "PricingCurrency": "string",
    "PricingCurrencyContractedUnitPrice": "decimal",
    "PricingCurrencyEffectiveCost": "decimal",
    "PricingCurrencyListUnitPrice": "decimal",
    "ServiceSubcategory": "string",
    "SkuMeter": "string",
    "SkuPriceDetails": "json",
    "SubAccountType": "string",
    # costflux's own.
    "x_CostComponent": "string",
    "x_Model": "string",
    "x_InputTokens": "integer",
    "x_OutputTokens": "integer",
    "x_CachedInputTokens": "integer",
    "x_CacheWriteInputTokens": "integer",
    "x_CacheWrite1hInputTokens": "integer",
    "x_ReasoningTokens": "integer",
    "x_AudioInputTokens": "integer",
    "x_AudioOutputTokens": "integer",
    "x_ImageInputTokens": "integer",
    "x_WebSearchCalls": "integer",
    "x_Requests": "integer",
    "x_BatchRequests": "integer",
    "x_PriorityRequests": "integer",
    "x_FlexRequests": "integer",
    "x_GpuHours": "decimal",
    "x_ContractDiscount": "decimal",
    "x_TextTokenCost": "decimal",
    "x_CacheWriteCost": "decimal",
    "x_ReasoningCost": "decimal",
    "x_AudioCost": "decimal",
    "x_ImageCost": "decimal",
    "x_WebSearchCost": "decimal",
}
COLUMNS = tuple(COLUMN_KINDS)

#: x_ count column -> the allocation row's field (absent: 0).
_COUNTS = {
    "x_InputTokens": "inputTokens",
    "x_OutputTokens": "outputTokens",
    "x_CachedInputTokens": "cachedInputTokens",
    "x_CacheWrite1hInputTokens": "cacheWrite1hInputTokens",
    "x_ReasoningTokens": "reasoningTokens",
    "x_AudioInputTokens": "audioInputTokens",
    "x_AudioOutputTokens": "audioOutputTokens",
    "x_ImageInputTokens": "imageInputTokens",
    "x_WebSearchCalls": "webSearchCalls",
    "x_Requests": "requests",
    "x_BatchRequests": "batchRequests",
    "x_PriorityRequests": "priorityRequests",
    "x_FlexRequests": "flexRequests",
}
#: x_ part cost column -> the allocation row's exact field (absent: 0).
_PART_COSTS = {
    "x_TextTokenCost": "textTokenCostExact",
    "x_CacheWriteCost": "cacheWriteCostExact",
    "x_ReasoningCost": "reasoningCostExact",
    "x_AudioCost": "audioCostExact",
    "x_ImageCost": "imageCostExact",
    "x_WebSearchCost": "webSearchCostExact",
}
#: GPU pricing tier -> FOCUS PricingCategory.
_PRICING_CATEGORY = {"on_demand": "Standard", "spot": "Dynamic", "reserved_1y": "Committed"}
#: Other cost component -> (ServiceCategory, ServiceSubcategory); any other: Other.
_OTHER_SERVICE = {
    "storage": ("Storage", "Other (Storage)"),
    "network": ("Networking", "Other (Networking)"),
    "networking": ("Networking", "Other (Networking)"),
    "logs": ("Management and Governance", "Observability"),
    "monitoring": ("Management and Governance", "Observability"),
    "observability": ("Management and Governance", "Observability"),
}
_AI = ("AI and Machine Learning", "Generative AI")


class FocusError(InputError):
    """The API's answer cannot be turned into FOCUS rows (the message says which row)."""


@dataclass(frozen=True, slots=True)
class FocusAccount:
    """Who bills whom: costflux is the provider of an internal showback account by default."""

    billing_account_id: str = "costflux"
    billing_account_name: str = "costflux"
    provider: str = "costflux"  # ProviderName, PublisherName and InvoiceIssuerName
    currency: str = "USD"


@dataclass(frozen=True, slots=True)
class GpuUse:
    """One model's GPU time in one charge period on one GPU type at one pricing tier."""

    gpu_type: str
    tier: str
    hours: Decimal  # all GPU time
    idle_hours: Decimal
    cost: Decimal  # all of it, from the report's float (a weight, never a charged amount)
    idle_cost: Decimal


def gpu_use(report: Mapping[str, Mapping[str, object]]) -> dict[str, list[GpuUse]]:
    """Model -> its GPU use, from a ``/model/gpu`` set aggregated by model, gpu_type,
    pricing_tier (a model named with "/" keeps them: the last two parts are type and tier)."""
    uses: dict[str, list[GpuUse]] = {}
    for name, row in sorted(report.items()):
        parts = name.rsplit("/", 2)
        if len(parts) != 3:
            raise FocusError(f"/model/gpu row {name!r}: expected model/gpu_type/pricing_tier")
        model, gpu_type, tier = parts
        uses.setdefault(model, []).append(GpuUse(
            gpu_type=gpu_type, tier=tier,
            hours=_float(row.get("gpuHours")), idle_hours=_float(row.get("idleHours")),
            cost=_float(row.get("totalCost")), idle_cost=_float(row.get("idleCost")),
        ))
    return uses


def needs_known_values(name: str) -> bool:
    """Whether a group name is ambiguous alone: some value in it holds a "/"."""
    return name not in (_IDLE, _UNALLOCATED) and name.count("/") != len(GROUP_DIMENSIONS) - 1


def split_group_name(
    name: str, known: Mapping[str, frozenset[str]] | None = None
) -> tuple[str, ...]:
    """A group name's values, in GROUP_DIMENSIONS order.

    A value may itself hold "/" (a model named ``openai/gpt-4o``); then ``known`` (each
    dimension's values in the window; a dimension left out holds no "/") tells where the
    cuts go.

    >>> split_group_name("gpt-4/search/rag/web/ml-prod")
    ('gpt-4', 'search', 'rag', 'web', 'ml-prod')
    >>> split_group_name("openai/gpt-4o/a/b/c/d", {"model": frozenset({"openai/gpt-4o"})})
    ('openai/gpt-4o', 'a', 'b', 'c', 'd')
    """
    if name in (_IDLE, _UNALLOCATED):
        return (name, *[_UNALLOCATED] * (len(GROUP_DIMENSIONS) - 1))
    pieces = name.split("/")
    cuts_needed = len(GROUP_DIMENSIONS) - 1
    if len(pieces) - 1 == cuts_needed:
        return tuple(pieces)
    if len(pieces) - 1 < cuts_needed or known is None:
        raise FocusError(f"allocation row {name!r}: cannot tell its "
                         f"{', '.join(GROUP_DIMENSIONS)} apart")
    fits = []
    for cuts in combinations(range(1, len(pieces)), cuts_needed):
        bounds = (0, *cuts, len(pieces))
        values = tuple("/".join(pieces[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))
        if all(value in known[dimension] if dimension in known else "/" not in value
               for dimension, value in zip(GROUP_DIMENSIONS, values, strict=True)):
            fits.append(values)
    if len(fits) != 1:
        raise FocusError(f"allocation row {name!r}: {len(fits)} ways to read it as "
                         f"{'/'.join(GROUP_DIMENSIONS)}; a value holding '/' is ambiguous")
    return fits[0]


def focus_rows(
    sets: Iterable[Mapping[str, Mapping[str, object]]],
    *,
    gpu: Mapping[str, Mapping[str, Sequence[GpuUse]]] | None = None,
    known: Mapping[str, frozenset[str]] | None = None,
    account: FocusAccount = FocusAccount(),
) -> Iterator[dict[str, object]]:
    """FOCUS rows (column -> value: Decimal, datetime, str, int or None) of allocation sets.

    ``sets``: one allocation set per charge period (``step=1h`` or ``1d``), grouped by
    LABEL_DIMENSIONS. ``gpu``: per period start (the rows' ``start``), ``gpu_use`` of that
    period's ``/model/gpu``; needed for periods with GPU cost, which otherwise get one GPU
    row per group without GPU type or hours. ``known``: each dimension's values, for names
    holding "/" (see ``split_group_name``).
    """
    for allocation_set in sets:
        rows = [allocation_set[name] for name in sorted(allocation_set)]
        if not rows:
            continue
        period = _Period.of(rows[0])
        uses = (gpu or {}).get(period.start_text, {})
        wholes = _gpu_wholes(rows, known)
        for row in rows:
            yield from _rows_of(row, period, uses, wholes, known, account)


@dataclass(frozen=True, slots=True)
class _Period:
    start: datetime
    end: datetime
    start_text: str
    billing_start: datetime
    billing_end: datetime

    @classmethod
    def of(cls, row: Mapping[str, object]) -> _Period:
        start, end = _instant(row, "start"), _instant(row, "end")
        month_end = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
        return cls(start, end, str(row["start"]),
                   datetime(start.year, start.month, 1, tzinfo=UTC), month_end)

    @property
    def hours(self) -> Decimal:
        seconds = (calendar.timegm(self.end.timetuple())
                   - calendar.timegm(self.start.timetuple()))
        return (Decimal(seconds) / 3600).quantize(_QUANTITY)


def _instant(row: Mapping[str, object], key: str) -> datetime:
    text = str(row[key])
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FocusError(f"allocation row {row.get('name')!r}: {key} {text!r} is not "
                         "RFC 3339") from None
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class _Money:
    billed: Decimal
    effective: Decimal
    listed: Decimal


def _rows_of(
    row: Mapping[str, object], period: _Period, uses: Mapping[str, Sequence[GpuUse]],
    wholes: Mapping[str, int], known: Mapping[str, frozenset[str]] | None,
    account: FocusAccount,
) -> Iterator[dict[str, object]]:
    name = str(row["name"])
    model, *labels = split_group_name(name, known)
    tags = {key: value for key, value in zip(GROUP_DIMENSIONS[1:], labels, strict=True)
            if value != _UNALLOCATED}
    base = _base(period, model, tags, account)
    total = _exact(row, "totalCostExact")
    effective = _exact(row, "effectiveCostExact", total)
    listed = _exact(row, "listCostExact", total)
    if name == _IDLE:
        yield from _gpu_rows(base, row, total, model, uses, wholes, idle=True)
    elif "tokenCostExact" in row or not _has_gpu_cost(row):
        token = _exact(row, "tokenCostExact", total)
        gpu_part = total - token
        money = _Money(token, effective - gpu_part, listed - gpu_part)
        if money.listed < 0 or money.effective < 0:
            raise FocusError(f"allocation row {name!r}: list or effective cost below its GPU "
                             "cost; expected them to cover token and GPU cost as totalCost does")
        if _has_usage(row) or token or money.listed or money.effective:
            yield _token_row(base, row, model, money, "tokens")
        if gpu_part:
            yield from _gpu_rows(base, row, gpu_part, model, uses, wholes, idle=False)
    else:  # an older worker: no exact token cost, so token and GPU cost stay one row
        combined = _token_row(base, row, model, _Money(total, effective, listed), "tokens+gpu")
        combined["x_GpuHours"] = _combined_gpu_hours(row, model, uses, wholes)
        combined["ChargeDescription"] = f"LLM tokens and GPU time of {model}"
        yield combined
    for component, amount in _other_costs(row):
        yield _other_row(base, component, amount, period)


def _base(period: _Period, model: str, tags: Mapping[str, str],
          account: FocusAccount) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(COLUMNS)
    row.update({
        "BillingAccountId": account.billing_account_id,
        "BillingAccountName": account.billing_account_name,
        "BillingAccountType": "Showback",
        "BillingCurrency": account.currency,
        "PricingCurrency": account.currency,
        "BillingPeriodStart": period.billing_start,
        "BillingPeriodEnd": period.billing_end,
        "ChargePeriodStart": period.start,
        "ChargePeriodEnd": period.end,
        "ChargeCategory": "Usage",
        "InvoiceIssuerName": account.provider,
        "ProviderName": account.provider,
        "PublisherName": account.provider,
        "InvoiceIssuer": account.provider,
        "Provider": account.provider,
        "Publisher": account.provider,
        "Tags": json.dumps(dict(sorted(tags.items())), separators=(",", ":"),
                           ensure_ascii=False),
        "x_Model": model,
        "x_GpuHours": Decimal(0),
        "x_ContractDiscount": Decimal(0),
        **dict.fromkeys(_COUNTS, 0), "x_CacheWriteInputTokens": 0,
        **dict.fromkeys(_PART_COSTS, Decimal(0)),
    })
    return row


def _with_money(row: dict[str, object], money: _Money) -> dict[str, object]:
    row.update({"BilledCost": money.billed, "EffectiveCost": money.effective,
                "ContractedCost": money.effective, "ListCost": money.listed,
                "PricingCurrencyEffectiveCost": money.effective})
    return row


def _token_row(base: Mapping[str, object], row: Mapping[str, object], model: str,
               money: _Money, component: str) -> dict[str, object]:
    tokens = _count(row, "inputTokens") + _count(row, "outputTokens")
    focus = _with_money(dict(base), money)
    service_category, subcategory = _AI
    focus.update({
        "ChargeDescription": f"LLM tokens of {model}",
        "ChargeFrequency": "Usage-Based",
        "ConsumedQuantity": Decimal(tokens), "ConsumedUnit": "Tokens",
        "PricingQuantity": Decimal(tokens) / _THOUSAND, "PricingUnit": "1000 Tokens",
        "PricingCategory": "Standard",
        "ResourceId": model, "ResourceName": model, "ResourceType": "Model",
        "ServiceCategory": service_category, "ServiceSubcategory": subcategory,
        "ServiceName": "LLM Inference",
        "SkuId": model, "SkuPriceId": model, "SkuMeter": "Tokens",
        "SkuPriceDetails": json.dumps({"x_Model": model}, ensure_ascii=False),
        "x_CostComponent": component,
        "x_ContractDiscount": _exact(row, "contractDiscountExact", Decimal(0)),
        **{column: _count(row, field) for column, field in _COUNTS.items()},
        "x_CacheWriteInputTokens": (_count(row, "cacheWriteInputTokens")
                                    + _count(row, "cacheWrite1hInputTokens")),
        **{column: _exact(row, field, Decimal(0)) for column, field in _PART_COSTS.items()},
    })
    return focus


def _gpu_rows(
    base: Mapping[str, object], row: Mapping[str, object], amount: Decimal, model: str,
    uses: Mapping[str, Sequence[GpuUse]], wholes: Mapping[str, int], idle: bool,
) -> Iterator[dict[str, object]]:
    """The GPU part of an allocation row, split over the GPU types and tiers it paid for."""
    if idle:  # every model's idle time, by GPU type and tier
        pools: dict[tuple[str, str], tuple[Decimal, Decimal]] = {}
        for model_uses in uses.values():
            for use in model_uses:
                hours, cost = pools.get((use.gpu_type, use.tier), (Decimal(0), Decimal(0)))
                pools[(use.gpu_type, use.tier)] = (hours + use.idle_hours, cost + use.idle_cost)
        fraction = Decimal(1)
    else:
        shared_idle = _IDLE not in wholes  # no idle row: the users paid for idle time too
        pools = {(use.gpu_type, use.tier): (use.hours if shared_idle else
                                            use.hours - use.idle_hours,
                                            use.cost if shared_idle else use.cost - use.idle_cost)
                 for use in uses.get(model, ())}
        whole = wholes.get(model, 0)
        fraction = Decimal(exact_pico(amount)) / whole if whole else Decimal(0)
    keys = sorted(pools)
    if not keys:  # no GPU report for the period: one row without a GPU type
        keys, pools = [("", "")], {("", ""): (Decimal(0), Decimal(0))}
    amounts = split_in_proportion(exact_pico(amount), [_weight(pools[k][1]) for k in keys])
    for (gpu_type, tier), pico in zip(keys, amounts, strict=True):
        if not pico:
            continue
        money = Decimal(pico) / PICO_PER_DOLLAR
        hours = (pools[(gpu_type, tier)][0] * fraction).quantize(_QUANTITY)
        focus = _with_money(dict(base), _Money(money, money, money))
        what = f"{gpu_type} GPUs, {tier}" if gpu_type else "GPUs"
        service_category, subcategory = _AI
        focus.update({
            "ChargeDescription": (f"idle time of {what}" if idle
                                  else f"GPU time of {model} on {what}"),
            "ChargeFrequency": "Usage-Based",
            "ConsumedQuantity": hours, "ConsumedUnit": "GPU-Hours",
            "PricingQuantity": hours, "PricingUnit": "GPU-Hours",
            "PricingCategory": _PRICING_CATEGORY.get(tier, "Other"),
            "ResourceId": "/".join(p for p in ("gpu", gpu_type or None, tier or None,
                                               None if idle else model) if p),
            "ResourceName": f"idle {what}" if idle else f"{what} serving {model}",
            "ResourceType": "GPU",
            "ServiceCategory": service_category, "ServiceSubcategory": subcategory,
            "ServiceName": "LLM Inference",
            "SkuId": gpu_type or "gpu",
            "SkuPriceId": f"{gpu_type}/{tier}" if gpu_type else "gpu",
            "SkuMeter": "GPU Hours",
            "SkuPriceDetails": json.dumps(
                {"x_GpuType": gpu_type, "x_PricingTier": tier} if gpu_type else {}),
            "x_CostComponent": "gpu_idle" if idle else "gpu",
            "x_GpuHours": hours,
        })
        yield focus


def _other_row(base: Mapping[str, object], component: str, amount: Decimal,
               period: _Period) -> dict[str, object]:
    focus = _with_money(dict(base), _Money(amount, amount, amount))
    service_category, subcategory = _OTHER_SERVICE.get(component.lower(),
                                                       ("Other", "Other (Other)"))
    focus.update({
        "ChargeDescription": f"{component}: monthly amount, prorated and shared",
        "ChargeFrequency": "Recurring",
        "ConsumedQuantity": period.hours, "ConsumedUnit": "Hours",
        "PricingQuantity": period.hours, "PricingUnit": "Hours",
        "PricingCategory": "Standard",
        "ServiceCategory": service_category, "ServiceSubcategory": subcategory,
        "ServiceName": f"LLM Inference {component}",
        "SkuId": f"other/{component}", "SkuPriceId": f"other/{component}",
        "SkuMeter": component, "SkuPriceDetails": "{}",
        "x_CostComponent": component,
    })
    return focus


def _gpu_wholes(rows: Sequence[Mapping[str, object]],
                known: Mapping[str, frozenset[str]] | None) -> dict[str, int]:
    """Model -> the GPU parts of its rows in the period, in pico-dollars (a row's GPU-hours
    are its part of its model's); the key ``__idle__`` is there when idle time is unshared."""
    wholes: dict[str, int] = {}
    for row in rows:
        name = str(row["name"])
        if name == _IDLE:
            wholes[_IDLE] = 1
            continue
        model = split_group_name(name, known)[0]
        wholes[model] = wholes.get(model, 0) + _gpu_pico(row)
    return wholes


def _gpu_pico(row: Mapping[str, object]) -> int:
    """A row's GPU part, as a weight: exact with tokenCostExact, else from the floats."""
    if "tokenCostExact" in row:
        return exact_pico(_exact(row, "totalCostExact") - _exact(row, "tokenCostExact"))
    return _weight(_float(row.get("gpuCost")) + _float(row.get("idleCost")))


def _combined_gpu_hours(row: Mapping[str, object], model: str,
                        uses: Mapping[str, Sequence[GpuUse]],
                        wholes: Mapping[str, int]) -> Decimal:
    whole = wholes.get(model, 0)
    if not whole:
        return Decimal(0)
    shared_idle = _IDLE not in wholes
    hours = sum((use.hours if shared_idle else use.hours - use.idle_hours
                 for use in uses.get(model, ())), Decimal(0))
    return (hours * _gpu_pico(row) / whole).quantize(_QUANTITY)


def _weight(cost: Decimal) -> int:
    """A cost from the report's floats as a split weight in pico-dollars (never negative)."""
    return max(0, exact_pico(cost.quantize(_PICO)))


def _other_costs(row: Mapping[str, object]) -> list[tuple[str, Decimal]]:
    components = row.get("otherCostsExact")
    if not isinstance(components, Mapping):
        return []
    return [(str(component), Decimal(str(amount)))
            for component, amount in sorted(components.items()) if Decimal(str(amount))]


def _has_gpu_cost(row: Mapping[str, object]) -> bool:
    # The floats are 0.0 exactly when the exact amounts are 0.
    return bool(_float(row.get("gpuCost")) or _float(row.get("idleCost")))


def _has_usage(row: Mapping[str, object]) -> bool:
    return any(_count(row, field) for field in _COUNTS.values())


def _exact(row: Mapping[str, object], key: str, default: Decimal | None = None) -> Decimal:
    value = row.get(key)
    if value is None:
        if default is None:
            raise FocusError(f"allocation row {row.get('name')!r} has no {key}")
        return default
    try:
        amount = Decimal(str(value))
    except ArithmeticError:
        raise FocusError(f"allocation row {row.get('name')!r}: {key} {value!r} is not a "
                         "decimal") from None
    if not amount.is_finite():
        raise FocusError(f"allocation row {row.get('name')!r}: {key} {value!r} is not finite")
    return amount


def _count(row: Mapping[str, object], key: str) -> int:
    value = row.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FocusError(f"allocation row {row.get('name')!r}: {key} {value!r} is not an "
                         "integer")
    return value


def _float(value: object) -> Decimal:
    """A float of the API as a Decimal (its shortest repr); absent is 0."""
    if value is None:
        return Decimal(0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FocusError(f"expected a number, got {value!r}")
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def csv_cells(row: Mapping[str, object]) -> list[str]:
    """A row's CSV cells in COLUMNS order: exact decimals, always with a decimal point (so
    readers such as pandas and the FOCUS validator take the column as decimal), RFC 3339
    UTC times, and empty cells for nulls.

    >>> cells = csv_cells({"BilledCost": Decimal("0E-12"), "ConsumedQuantity": Decimal(12)})
    >>> cells[COLUMNS.index("BilledCost")], cells[COLUMNS.index("ConsumedQuantity")]
    ('0.000000000000', '12.0')
    """
    return [_cell(row.get(column), COLUMN_KINDS[column]) for column in COLUMNS]


def _cell(value: object, kind: str) -> str:
    if value is None:
        return ""
    if kind == "decimal":
        if not isinstance(value, Decimal):
            raise FocusError(f"expected a Decimal, got {value!r}")
        text = format(value, "f")
        return text if "." in text else f"{text}.0"
    if kind == "datetime":
        if not isinstance(value, datetime):
            raise FocusError(f"expected a datetime, got {value!r}")
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)

