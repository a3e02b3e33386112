"""The price file: the seed's ``pricing.yaml`` shape, with the extensions real price lists
need, read into a ``PriceBook`` (``costflux.core.pricing``).

Shape (the seed's, unchanged)::

    gpu_pricing:
      nvidia-a100-80gb: {on_demand: 3.5, spot: 1.2, reserved_1y: 2.1}   # $/hour
    model_costs:
      llama-2-70b: {input_tokens: 0.0008, output_tokens: 0.0016}       # $/1K tokens

Extensions, all optional, per model: ``cached_input_tokens`` ($/1K; default = the input price),
the $/1M spelling ``input_per_1m`` / ``output_per_1m`` / ``cached_input_per_1m`` (instead of the
$/1K keys), ``tiers``: long-context prices, a list of ``{above_tokens: <n>, <price keys>…}``
(a request whose prompt, cached tokens included, exceeds ``above_tokens`` is priced entirely at
that tier, the largest such; keys a tier leaves out are the model's own prices), and
``changes``: a list of ``{effective_from: <RFC 3339>, <price keys>…, tiers?}`` so an event is
priced at the price in force at its event time (a change without ``tiers`` keeps the earlier
tiers). An entry with only ``changes`` is unpriced before its first change. Per GPU type the
same ``changes`` list is accepted. A Kubernetes ConfigMap manifest holding ``pricing.yaml`` in
``data`` is read too.

An optional ``other_costs`` section holds the costs usage does not measure (the seeds'
storage, network and operations): ``<name>: {monthly: <$ per calendar month>, allocate_by:
cost|requests|tokens|even}``, with the same ``changes`` list for ``monthly`` (see
``costflux.core.overheads`` for how they are prorated and shared).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import fields, replace
from decimal import Context, Decimal
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, Strict, model_validator

from costflux.core.config_files import (
    AMOUNT_SCHEMA,
    PERCENT_SCHEMA,
    ConfigModel,
    Fix,
    Moment,
    YamlText,
    check,
    dollars,
    mappings,
    percentage,
    refuse,
)
from costflux.core.contracts import ContractEntry, contracts_from
from costflux.core.money import MoneyError, exact_pico
from costflux.core.pricing import (
    ALLOCATE_BY,
    TIERS,
    GpuPrice,
    ModelPrice,
    ModelTier,
    OtherCost,
    PartRates,
    PriceBook,
    PricingError,
)

__all__ = ["PricingFile", "parse_pricing_text"]

#: Price key -> what it prices; ``_PARTS`` are the kinds beyond text and cache reads (the
#: fields of ``PartRates``, in its order: ``_discounted`` builds one from them positionally).
_PARTS = tuple(field.name for field in fields(PartRates))
_PER_1K = {"input_tokens": "input", "output_tokens": "output", "cached_input_tokens": "cached",
           "cache_write_input_tokens": "cache_write",
           "cache_write_1h_input_tokens": "cache_write_1h",
           "audio_input_tokens": "audio_input", "image_input_tokens": "image_input",
           "reasoning_tokens": "reasoning", "audio_output_tokens": "audio_output"}
_PER_1M = {key.removesuffix("_tokens") + "_per_1m": target for key, target in _PER_1K.items()}
_PER_CALL = {"per_web_search_call": "web_search"}
_SERVICE_TIERS = ("priority", "flex")
_BEGINNING = -(2**62)
_EXACT = Context(prec=200)

#: A price: $/1K or $/1M tokens, $ per call or per GPU-hour.
Price = Annotated[Decimal | None, dollars("0.0008"), AMOUNT_SCHEMA]
#: An amount in $ per calendar month.
Monthly = Annotated[Decimal | None, dollars("4800", exact=True), AMOUNT_SCHEMA]
Percentage = Annotated[Decimal, percentage("50"), PERCENT_SCHEMA]

#: Price key -> (the price it sets, per how many tokens or calls the key's dollars are).
_UNITS = {**{key: (part, 1000) for key, part in _PER_1K.items()},
          **{key: (part, 1_000_000) for key, part in _PER_1M.items()},
          **{key: (part, 1) for key, part in _PER_CALL.items()}}


class _Priced(ConfigModel):
    """Dollar amounts, each exactly a whole number of pico-dollars per token (call, hour)."""

    units: ClassVar[dict[str, tuple[str, int]]]

    def picos(self) -> dict[str, int]:
        """The prices given, by what they price, in pico-dollars per token (call, hour)."""
        values = {}
        for key, (part, per) in self.units.items():
            dollars = getattr(self, key)
            if dollars is not None:
                try:
                    values[part] = exact_pico(_EXACT.divide(dollars, Decimal(per)))
                except MoneyError as exc:
                    raise refuse(str(exc), key) from None
        return values

    @model_validator(mode="after")
    def _exact(self) -> Self:
        self.picos()
        return self


def _per_1k(what: str) -> Any:
    return Field(None, description=f"$ per 1K {what}")


class PriceKeys(_Priced):
    """A model's prices ($/1K tokens, $/1M tokens or $ per call); each optional here."""

    units: ClassVar[dict[str, tuple[str, int]]] = _UNITS
    unknown: ClassVar[str] = (
        "unknown price key; use input_tokens/output_tokens/cached_input_tokens ($/1K) or "
        "input_per_1m/output_per_1m/cached_input_per_1m ($/1M), the same for "
        "cache_write_input, cache_write_1h_input, audio_input, image_input, reasoning and "
        "audio_output, or per_web_search_call ($ per call)")

    input_tokens: Price = _per_1k("input tokens")
    output_tokens: Price = _per_1k("output tokens")
    cached_input_tokens: Price = _per_1k("cached input tokens (default: input)")
    cache_write_input_tokens: Price = _per_1k("tokens written to the prompt cache (default: input)")
    cache_write_1h_input_tokens: Price = _per_1k("tokens written to the 1-hour prompt cache")
    audio_input_tokens: Price = _per_1k("audio input tokens (default: input)")
    image_input_tokens: Price = _per_1k("image input tokens (default: input)")
    reasoning_tokens: Price = _per_1k("reasoning tokens (default: output)")
    audio_output_tokens: Price = _per_1k("audio output tokens (default: output)")
    input_per_1m: Price = Field(None, description="$ per 1M input tokens; each *_per_1m key "
                                "is its *_tokens key per 1M tokens")
    output_per_1m: Price = None
    cached_input_per_1m: Price = None
    cache_write_input_per_1m: Price = None
    cache_write_1h_input_per_1m: Price = None
    audio_input_per_1m: Price = None
    image_input_per_1m: Price = None
    reasoning_per_1m: Price = None
    audio_output_per_1m: Price = None
    per_web_search_call: Price = Field(None, description="$ per web search call")

    @classmethod
    def _check_raw(cls, value: dict[Any, Any]) -> None:
        priced: set[str] = set()
        for key in value:
            part = cls.units.get(key, (None,))[0]
            if part in priced:
                raise refuse(f"the {part} price is given twice ($/1K and $/1M)", key)
            if part is not None:
                priced.add(part)


def _ascending(tiers: list[TierPrices] | None) -> list[TierPrices] | None:
    for index, (lower, tier) in enumerate(itertools.pairwise(tiers or ()), start=1):
        if tier.above_tokens <= lower.above_tokens:
            raise refuse("tiers must be in ascending above_tokens", index, "above_tokens")
    return tiers


class TierPrices(PriceKeys):
    """A long-context tier: the prices of a request whose prompt exceeds ``above_tokens``."""

    shape: ClassVar[str] = "expected a list of {above_tokens: <prompt tokens>, <prices>}"

    above_tokens: Annotated[int, Strict(), Field(gt=0, description=(
        "prompt tokens (cached included) above which the whole request pays these prices"))]

    @classmethod
    def _check_raw(cls, value: dict[Any, Any]) -> None:
        above = value.get("above_tokens")
        # bool is an int subclass: `above_tokens: yes` is a typo, not a boundary of 1 token.
        if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
            raise refuse("above_tokens must be a positive whole number of tokens")
        super()._check_raw(value)


Tiers = Annotated[list[TierPrices] | None, mappings, AfterValidator(_ascending),
                  Fix("expected a list of {above_tokens: <prompt tokens>, <prices>}")]


class ModePrices(PriceKeys):
    """The batch API's or a service tier's prices: a discount off the model's and/or prices
    of its own."""

    shape: ClassVar[str] = ("expected {discount_pct: <percent>} and/or prices, e.g. "
                            "{discount_pct: 50}")

    discount_pct: Annotated[Percentage | None, Field(description="% off every price")] = None
    tiers: Tiers = None


class ServiceTierPrices(ConfigModel):
    """The priority and flex service tiers' prices."""

    shape: ClassVar[str] = ("expected {priority: {...}, flex: {...}} (each {discount_pct: "
                            "<percent>} and/or prices)")

    priority: ModePrices | None = None
    flex: ModePrices | None = None

    @classmethod
    def _check_raw(cls, value: dict[Any, Any]) -> None:
        if set(value) - set(_SERVICE_TIERS):
            raise refuse(cls.shape)


class ModelPrices(PriceKeys):
    """A model's prices, or a change of them."""

    shape: ClassVar[str] = "expected {input_tokens: <$/1K>, output_tokens: <$/1K>}"

    tiers: Tiers = None
    batch: ModePrices | None = None
    service_tiers: ServiceTierPrices | None = None
    provider: Annotated[str | None, Fix("provider must be a name, e.g. openai or anthropic")
                        ] = None


_CHANGES = Fix("expected a list of {effective_from: ..., <prices>}")


class ModelChange(ModelPrices):
    """New prices from ``effective_from``; what a change leaves out it keeps."""

    effective_from: Moment


class ModelEntry(ModelPrices):
    """A model: its prices and their dated changes."""

    changes: Annotated[list[ModelChange] | None, mappings, _CHANGES] = None


class GpuPrices(_Priced):
    """A GPU type's prices in $/hour; spot and reserved default to on-demand."""

    units: ClassVar[dict[str, tuple[str, int]]] = {tier: (tier, 1) for tier in TIERS}
    shape: ClassVar[str] = "expected {on_demand: <$/hour>, spot: ..., reserved_1y: ...}"
    unknown: ClassVar[str] = f"unknown pricing tier; use {', '.join(TIERS)} ($/hour)"

    on_demand: Price = Field(None, description="$ per GPU-hour on demand")
    spot: Price = Field(None, description="$ per GPU-hour on spot (default: on demand)")
    reserved_1y: Price = Field(None, description="$ per GPU-hour reserved for 1 year (default: "
                                                 "on demand)")


class GpuChange(GpuPrices):
    effective_from: Moment


class GpuEntry(GpuPrices):
    changes: Annotated[list[GpuChange] | None, mappings, _CHANGES] = None


_OTHER_COST_SHAPE = "{monthly: <$ per month>, allocate_by: " + "|".join(ALLOCATE_BY) + "}"


class OtherCostChange(ConfigModel):
    """A new monthly amount from ``effective_from``."""

    unknown: ClassVar[str] = "unknown key; a component has monthly ($ per month), allocate_by, " \
                             "changes"

    effective_from: Moment
    monthly: Monthly = None

    @classmethod
    def _check_raw(cls, value: dict[Any, Any]) -> None:
        if "allocate_by" in value:
            raise refuse("allocate_by holds for the whole component; set it beside monthly",
                         "allocate_by")


class OtherCostEntry(ConfigModel):
    """A cost usage does not measure: an amount per calendar month and what shares it."""

    shape: ClassVar[str] = f"expected {_OTHER_COST_SHAPE}"
    unknown: ClassVar[str] = OtherCostChange.unknown

    monthly: Monthly = None
    allocate_by: Annotated[Literal["cost", "requests", "tokens", "even"], Fix(
        lambda value: f"cannot share by {value!r}; use one of {', '.join(ALLOCATE_BY)}")
    ] = "cost"
    changes: Annotated[list[OtherCostChange] | None, mappings, _CHANGES] = None


def _or_empty(value: Any) -> Any:
    return value or {}


def _identifiers(components: Any) -> Any:
    for name in components if isinstance(components, dict) else ():
        if not isinstance(name, str) or not name.isidentifier():
            raise refuse("a component name must be an identifier, e.g. storage or network", name)
    return components or {}


class PricingFile(ConfigModel):
    """A price file: GPU and model prices, other costs, contracts."""

    shape: ClassVar[str] = "expected a mapping with gpu_pricing and/or model_costs"
    unknown: ClassVar[str] = ("unknown section; the sections are gpu_pricing, model_costs, "
                              "other_costs and contracts")

    gpu_pricing: Annotated[dict[str, GpuEntry], BeforeValidator(_or_empty), Fix(
        "expected a mapping of name -> {on_demand: <$/hour>, spot: ..., reserved_1y: ...}")
    ] = {}
    model_costs: Annotated[dict[str, ModelEntry], BeforeValidator(_or_empty), Fix(
        "expected a mapping of name -> {input_tokens: <$/1K>, output_tokens: <$/1K>}")] = {}
    other_costs: Annotated[dict[str, OtherCostEntry], BeforeValidator(_identifiers), Fix(
        f"expected a mapping of name -> {_OTHER_COST_SHAPE}")] = {}
    contracts: Annotated[list[ContractEntry], mappings, BeforeValidator(lambda v: v or []), Fix(
        "expected a list of {provider: <name> or model: <name>, discount_pct: <percent>, "
        "effective_from?, effective_until?}")] = []

    @model_validator(mode="after")
    def _prices(self) -> Self:
        if not self.model_costs and not self.gpu_pricing:
            raise refuse("no prices: add model_costs (and/or gpu_pricing)")
        return self


def parse_pricing_text(text: str, source: str = "pricing.yaml") -> PriceBook:
    """Parse pricing YAML (or a ConfigMap manifest holding it) into a PriceBook."""
    document = YamlText(text, source, PricingError)
    if isinstance(document.value, dict) and document.value.get("kind") == "ConfigMap":
        text, source = _pricing_from_configmap(document.value, source)
        document = YamlText(text, source, PricingError)

    def fail(path: tuple[str | int, ...], message: str) -> PricingError:
        where = ".".join(str(p) for p in path) or "(top level)"
        line = document.line(path, nearest=False)
        return PricingError(f"{source}:{line}: {where}: {message}" if line
                            else f"{source}: {where}: {message}")

    prices = check(PricingFile, document.value, fail)
    models = {name: _timeline(entry, ("model_costs", name), _model_price, fail)
              for name, entry in prices.model_costs.items()}
    gpus = {name: _timeline(entry, ("gpu_pricing", name), _gpu_price, fail)
            for name, entry in prices.gpu_pricing.items()}
    other_costs = {name: OtherCost(tuple(_timeline(entry, ("other_costs", name), _monthly, fail)),
                                   entry.allocate_by)
                   for name, entry in prices.other_costs.items()}
    providers = {name: timeline[-1][1].provider for name, timeline in models.items() if timeline}
    return PriceBook(models, gpus, other_costs, contracts_from(prices.contracts, providers, fail))


def _pricing_from_configmap(manifest: dict[str, Any], source: str) -> tuple[str, str]:
    data = manifest.get("data") or {}
    if "pricing.yaml" in data:
        return str(data["pricing.yaml"]), f"{source}#data.pricing.yaml"
    if len(data) == 1:
        (key, value), = data.items()
        return str(value), f"{source}#data.{key}"
    raise PricingError(f"{source}: ConfigMap has no data['pricing.yaml']; put the price file there")


_Fail = Callable[[tuple[str | int, ...], str], PricingError]
_P = TypeVar("_P", "ModelPrice", "GpuPrice", int)


def _timeline(entry: Any, path: tuple[str | int, ...],
              price_of: Callable[[Any, _P | None, tuple[str | int, ...], _Fail], _P],
              fail: _Fail) -> list[tuple[int, _P]]:
    """The entry's price, then its dated changes in date order, each inheriting what it
    leaves out."""
    changes = sorted(enumerate(entry.changes or ()), key=lambda change: change[1].effective_from)
    # Only dated changes: unpriced before the first (e.g. an import with a start date).
    dated_only = changes and not entry.model_fields_set - {"changes"}
    timeline = [] if dated_only else [(_BEGINNING, price_of(entry, None, path, fail))]
    for index, change in changes:
        base = timeline[-1][1] if timeline else None
        timeline.append((change.effective_from,
                         price_of(change, base, (*path, "changes", index), fail)))
    return timeline


def _model_price(spec: ModelPrices | ModePrices, base: ModelPrice | None,
                 path: tuple[str | int, ...], fail: _Fail) -> ModelPrice:
    values = spec.picos()
    input_price = values.get("input", base.input if base else None)
    output_price = values.get("output", base.output if base else None)
    if input_price is None:
        raise fail(path, "missing input_tokens (the input price in $/1K tokens)")
    if output_price is None:
        raise fail(path, "missing output_tokens (the output price in $/1K tokens)")
    cached = values.get("cached", base.cached_input if base and "input" not in values else None)
    explicit = {**dict(base.explicit_parts if base else ()),
                **{k: v for k, v in values.items() if k in _PARTS}}
    provider = getattr(spec, "provider", None)
    price = ModelPrice(
        input_price, output_price, input_price if cached is None else cached,
        explicit_parts=tuple(sorted(explicit.items())),
        web_search_call=values.get("web_search", base.web_search_call if base else 0),
        provider=provider if provider is not None else base.provider if base else "",
    )
    if spec.tiers is not None:
        price = replace(price, tiers=_tiers(spec.tiers, price))
    elif base:
        price = replace(price, tiers=base.tiers)
    if not isinstance(spec, ModelPrices):  # a mode's own prices: no modes of their own
        return price
    return replace(
        price,
        batch=_mode_price(spec.batch, price, base.batch if base else None, (*path, "batch"),
                          fail),
        service_tiers=_service_tier_prices(spec, price, base, path, fail),
    )


def _mode_price(mode: ModePrices | None, price: ModelPrice, inherited: ModelPrice | None,
                path: tuple[str | int, ...], fail: _Fail) -> ModelPrice | None:
    """The batch API's (or a service tier's) prices: ``discount_pct`` off every price of the
    model, and/or prices of its own; a change without the section keeps the earlier one."""
    if mode is None:
        return inherited
    base = price
    if mode.discount_pct is not None:
        base = _discounted(price, mode.discount_pct, (*path, "discount_pct"), fail)
    if not mode.model_fields_set - {"discount_pct"}:
        return base
    # Prices of its own: the long-context tiers too are its own (none unless it gives them),
    # as a model's standard tiers would bill it below the mode's rates.
    return _model_price(mode, replace(base, tiers=(), batch=None, service_tiers=()), path, fail)


def _service_tier_prices(spec: ModelPrices, price: ModelPrice, base: ModelPrice | None,
                         path: tuple[str | int, ...], fail: _Fail
                         ) -> tuple[tuple[str, ModelPrice], ...]:
    if spec.service_tiers is None:
        return base.service_tiers if base else ()
    tiers = []
    for tier in _SERVICE_TIERS:
        tiered = _mode_price(getattr(spec.service_tiers, tier), price, None,
                             (*path, "service_tiers", tier), fail)
        if tiered is not None:
            tiers.append((tier, tiered))
    return tuple(tiers)


def _discounted(price: ModelPrice, pct: Decimal, path: tuple[str | int, ...], fail: _Fail
                ) -> ModelPrice:
    """Every price of ``price`` with ``pct`` percent off, exactly (an error when a price
    cannot be cut to a whole pico-dollar per token)."""

    def cut(pico: int) -> int:
        value = _EXACT.multiply(Decimal(pico), _EXACT.divide(100 - pct, Decimal(100)))
        if value != value.to_integral_value():
            raise fail(path, f"{pct}% off {pico} pico-dollars per token is not a whole "
                       "pico-dollar: give the discounted prices themselves")
        return int(value)

    def cut_parts(parts: PartRates) -> PartRates:
        return PartRates(*(cut(getattr(parts, name)) for name in _PARTS))

    return replace(
        price, input=cut(price.input), output=cut(price.output),
        cached_input=cut(price.cached_input), parts=cut_parts(price.parts),
        explicit_parts=tuple((k, cut(v)) for k, v in price.explicit_parts),
        web_search_call=cut(price.web_search_call),
        tiers=tuple(ModelTier(t.above_tokens, cut(t.input), cut(t.output), cut(t.cached_input),
                              cut_parts(t.parts)) for t in price.tiers),
        batch=None, service_tiers=(),
    )


def _tiers(specs: list[TierPrices], base: ModelPrice) -> tuple[ModelTier, ...]:
    """Long-context tiers, ascending; a price a tier leaves out is the model's own."""
    tiers = []
    for spec in specs:
        values = spec.picos()
        input_rate = values.get("input", base.input)
        output_rate = values.get("output", base.output)
        explicit = {**dict(base.explicit_parts),
                    **{k: v for k, v in values.items() if k in _PARTS}}
        tiers.append(ModelTier(
            spec.above_tokens, input_rate, output_rate, values.get("cached", base.cached_input),
            PartRates.resolve(explicit, input_rate, output_rate),
        ))
    return tuple(tiers)


def _gpu_price(spec: GpuPrices, base: GpuPrice | None, path: tuple[str | int, ...],
               fail: _Fail) -> GpuPrice:
    values = spec.picos()
    if "on_demand" not in values and base is None:
        raise fail(path, "missing on_demand (the on-demand price in $/hour)")
    on_demand = values.get("on_demand", base.on_demand if base else 0)
    # A tier left out costs what on-demand costs: no discount is better than a made-up one.
    spot = values.get("spot", base.spot if base else on_demand)
    reserved = values.get("reserved_1y", base.reserved_1y if base else on_demand)
    return GpuPrice(on_demand, spot, reserved)


def _monthly(spec: OtherCostEntry | OtherCostChange, base: int | None,
             path: tuple[str | int, ...], fail: _Fail) -> int:
    """An other cost component's (or one of its changes') amount in pico-dollars per month."""
    if spec.monthly is not None:
        return exact_pico(spec.monthly)  # checked exact by the model
    if base is None:
        raise fail(path, "missing monthly (the amount in $ per calendar month, e.g. 4800)")
    return base
