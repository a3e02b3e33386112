"""Price book: the seed's ``pricing.yaml`` shape, with the extensions real price lists need.

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

import bisect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Context, Decimal
from fractions import Fraction
from typing import Any, TypeVar

import yaml

from costflux.core.contracts import Contract, discount_at, parse_contracts
from costflux.core.money import MoneyError, exact_pico, to_decimal
from schemas._types import epoch_ms

__all__ = [
    "ALLOCATE_BY", "GpuPrice", "ModelPrice", "ModelTier", "OtherCost", "PartRates", "PriceBook",
    "PricingError", "parse_pricing_text",
]

TIERS = ("on_demand", "spot", "reserved_1y")
#: Price key -> what it prices; ``_PARTS`` are the kinds beyond text and cache reads.
_PARTS = ("cache_write", "cache_write_1h", "audio_input", "image_input", "reasoning",
          "audio_output")
_PER_1K = {"input_tokens": "input", "output_tokens": "output", "cached_input_tokens": "cached",
           "cache_write_input_tokens": "cache_write",
           "cache_write_1h_input_tokens": "cache_write_1h",
           "audio_input_tokens": "audio_input", "image_input_tokens": "image_input",
           "reasoning_tokens": "reasoning", "audio_output_tokens": "audio_output"}
_PER_1M = {key.removesuffix("_tokens") + "_per_1m": target for key, target in _PER_1K.items()}
_PER_CALL = {"per_web_search_call": "web_search"}
_NOT_PRICES = ("changes", "effective_from", "tiers", "above_tokens", "batch", "service_tiers",
               "provider", "discount_pct")
_SERVICE_TIERS = ("priority", "flex")
_BEGINNING = -(2**62)
_END_OF_TIME = 2**62
_EXACT = Context(prec=200)


class PricingError(ValueError):
    """The price file is invalid; the message names the field, its line and the fix."""


@dataclass(frozen=True, slots=True)
class PartRates:
    """Pico-dollars per token of the kinds of input and output beyond text and cache reads.

    A kind a price list leaves out is billed like what it is part of: cache writes and audio
    and image input at the input rate (a 1-hour write at the 5-minute write rate when that is
    given), reasoning and audio output at the output rate.
    """

    cache_write: int
    cache_write_1h: int
    audio_input: int
    image_input: int
    reasoning: int
    audio_output: int

    @classmethod
    def resolve(cls, explicit: Mapping[str, int], input_rate: int, output_rate: int
                ) -> PartRates:
        cache_write = explicit.get("cache_write", input_rate)
        return cls(
            cache_write=cache_write,
            cache_write_1h=explicit.get("cache_write_1h", cache_write),
            audio_input=explicit.get("audio_input", input_rate),
            image_input=explicit.get("image_input", input_rate),
            reasoning=explicit.get("reasoning", output_rate),
            audio_output=explicit.get("audio_output", output_rate),
        )


@dataclass(frozen=True, slots=True)
class ModelTier:
    """Per-token prices in pico-dollars for requests whose prompt exceeds ``above_tokens``."""

    above_tokens: int
    input: int
    output: int
    cached_input: int
    parts: PartRates = None  # type: ignore[assignment]  # None: resolved in __post_init__

    def __post_init__(self) -> None:
        if self.parts is None:
            object.__setattr__(self, "parts", PartRates.resolve({}, self.input, self.output))


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Per-token prices in pico-dollars; ``tiers`` in ascending ``above_tokens`` order.

    ``parts``: the rates of the other kinds of tokens (``explicit_parts`` those the price list
    gives; the rest derive from the input and output rates). ``web_search_call``: pico-dollars
    per web search. ``batch`` and ``service_tiers``: the prices of the batch API and of the
    priority and flex tiers, when the list gives them (else a request there pays these).
    ``provider``: who sells the model, which contracts may name.
    """

    input: int
    output: int
    cached_input: int
    tiers: tuple[ModelTier, ...] = ()
    parts: PartRates = None  # type: ignore[assignment]  # None: resolved in __post_init__
    explicit_parts: tuple[tuple[str, int], ...] = ()
    web_search_call: int = 0
    batch: ModelPrice | None = None
    service_tiers: tuple[tuple[str, ModelPrice], ...] = ()
    provider: str = ""

    def __post_init__(self) -> None:
        if self.parts is None:
            object.__setattr__(self, "parts", PartRates.resolve(
                dict(self.explicit_parts), self.input, self.output))

    def for_mode(self, batch: bool, service_tier: str) -> ModelPrice:
        """The prices a request sent in batch, or served at a service tier, pays."""
        if batch:
            return self.batch or self
        for tier, price in self.service_tiers:
            if tier == service_tier:
                return price
        return self

    def rates_for(self, input_tokens: int) -> ModelPrice | ModelTier:
        """The rates a request with this prompt size pays (its long-context tier, if any)."""
        tiers = self.tiers
        if tiers and input_tokens > tiers[0].above_tokens:
            for rates in reversed(tiers):  # stops at tiers[0] at the latest
                if input_tokens > rates.above_tokens:
                    return rates
        return self

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int) -> int:
        """Cost in pico-dollars; cached tokens are the part of the input served from cache.

        A long-context tier prices the whole request, as providers (and LiteLLM) bill it:
        the prompt size, cached tokens included, picks the rate for every token.
        """
        rates: ModelPrice | ModelTier = self
        # Hot path: one truth test when the model has no tiers (most), no iterator.
        tiers = self.tiers
        if tiers and input_tokens > tiers[0].above_tokens:
            for rates in reversed(tiers):  # stops at tiers[0] at the latest
                if input_tokens > rates.above_tokens:
                    break
        return (
            (input_tokens - cached_input_tokens) * rates.input
            + cached_input_tokens * rates.cached_input
            + output_tokens * rates.output
        )

    def cache_saving(self, input_tokens: int, cached_input_tokens: int) -> int:
        """Pico-dollars the prompt cache saved: the cost had the cached tokens been billed at
        the input rate, minus the cost billed; both at the rates of the tier ``cost`` picks.

        Stated through ``cost`` itself so the tier is picked exactly as billing picks it.

        >>> ModelPrice(input=10, output=0, cached_input=1).cache_saving(100, 40)
        360
        """
        return self.cost(input_tokens, 0, 0) - self.cost(input_tokens, 0, cached_input_tokens)


@dataclass(frozen=True, slots=True)
class GpuPrice:
    """Per-GPU-hour prices in pico-dollars, one per pricing tier."""

    on_demand: int
    spot: int
    reserved_1y: int

    def per_hour(self, tier: str) -> int:
        return int(getattr(self, tier))


#: What an other cost component is shared by: the groups' usage cost (token + GPU), their
#: requests, their tokens (input + output), or evenly.
ALLOCATE_BY = ("cost", "requests", "tokens", "even")


@dataclass(frozen=True, slots=True)
class OtherCost:
    """A cost outside usage (storage, network, operations) and what it is shared by.

    ``monthly``: (effective_from_ms, pico-dollars per calendar month) in time order; nothing
    is charged before the first.
    """

    monthly: tuple[tuple[int, int], ...]
    allocate_by: str = "cost"

    def __post_init__(self) -> None:
        if self.allocate_by not in ALLOCATE_BY:
            raise ValueError(f"allocate_by must be one of {', '.join(ALLOCATE_BY)}")


class _Timeline:
    """Prices of one key over time; lookup by event time."""

    __slots__ = ("_starts", "_prices")

    def __init__(self, entries: list[tuple[int, Any]]) -> None:
        entries.sort(key=lambda e: e[0])
        self._starts = [start for start, _ in entries]
        self._prices = [price for _, price in entries]

    def at(self, ts_ms: int) -> Any:
        span = self.span(ts_ms)
        return None if span is None else span[0]

    def span(self, ts_ms: int) -> tuple[Any, int, int] | None:
        """(price, start, end): the price at ``ts_ms`` and the times [start, end) it holds for."""
        index = bisect.bisect_right(self._starts, ts_ms) - 1
        if index < 0:
            return None
        end = self._starts[index + 1] if index + 1 < len(self._starts) else _END_OF_TIME
        return self._prices[index], self._starts[index], end


class PriceBook:
    """Every model and GPU price, each as a timeline of effective-from dates."""

    def __init__(
        self,
        models: Mapping[str, list[tuple[int, ModelPrice]]],
        gpus: Mapping[str, list[tuple[int, GpuPrice]]],
        other_costs: Mapping[str, OtherCost] | None = None,
        contracts: tuple[Contract, ...] = (),
    ) -> None:
        self._models = {name: _Timeline(list(entries)) for name, entries in models.items()}
        self._gpus = {name: _Timeline(list(entries)) for name, entries in gpus.items()}
        self._other_costs = dict(other_costs or {})
        self.contracts = contracts

    def discount(self, model: str, price: ModelPrice, ts_ms: int) -> Fraction | None:
        """The share of ``model``'s list cost a contract takes off at ``ts_ms`` (``price``:
        its price then, which names its provider); None without one."""
        return discount_at(self.contracts, model, price.provider, ts_ms)

    @property
    def models(self) -> frozenset[str]:
        return frozenset(self._models)

    @property
    def gpu_types(self) -> frozenset[str]:
        return frozenset(self._gpus)

    @property
    def other_costs(self) -> Mapping[str, OtherCost]:
        """The ``other_costs`` components by name, in file order (empty when not configured)."""
        return self._other_costs

    def model_price(self, model: str, ts_ms: int) -> ModelPrice | None:
        """Price in force for ``model`` at ``ts_ms``; None if unknown or not yet priced then."""
        span = self.model_price_span(model, ts_ms)
        return None if span is None else span[0]

    def model_price_span(self, model: str, ts_ms: int) -> tuple[ModelPrice, int, int] | None:
        """Like ``model_price``, with the times [start, end) that price is in force for."""
        timeline = self._models.get(model)
        return None if timeline is None else timeline.span(ts_ms)

    def gpu_price(self, gpu_type: str, ts_ms: int) -> GpuPrice | None:
        """Price in force for ``gpu_type`` at ``ts_ms``; None if unknown."""
        span = self.gpu_price_span(gpu_type, ts_ms)
        return None if span is None else span[0]

    def gpu_price_span(self, gpu_type: str, ts_ms: int) -> tuple[GpuPrice, int, int] | None:
        """Like ``gpu_price``, with the times [start, end) that price is in force for."""
        timeline = self._gpus.get(gpu_type)
        return None if timeline is None else timeline.span(ts_ms)


# --- parsing -------------------------------------------------------------------------------


class _Locator:
    """Finds the line of a field path in the YAML text, for error messages."""

    def __init__(self, text: str) -> None:
        try:
            self._root = yaml.compose(text)
        except yaml.YAMLError:
            self._root = None

    def line(self, path: tuple[str | int, ...]) -> int | None:
        """Line of the field's key (of the item, in a list); None if the path is absent."""
        node, line = self._root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if k.value == part), None)
                node, line = (pair[1], pair[0].start_mark.line) if pair else (None, None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                node = node.value[part] if part < len(node.value) else None
                line = None if node is None else node.start_mark.line
            else:
                node = None
            if node is None:
                return None
        return None if line is None else line + 1


def parse_pricing_text(text: str, source: str = "pricing.yaml") -> PriceBook:
    """Parse pricing YAML (or a ConfigMap manifest holding it) into a PriceBook."""
    document = _load_yaml(text, source)
    if isinstance(document, dict) and document.get("kind") == "ConfigMap":
        text, source = _pricing_from_configmap(document, source)
        document = _load_yaml(text, source)
    locator = _Locator(text)

    def fail(path: tuple[str | int, ...], message: str) -> PricingError:
        where = ".".join(str(p) for p in path) or "(top level)"
        line = locator.line(path)
        at = f"{source}:{line}" if line else source
        return PricingError(f"{at}: {where}: {message}")

    if not isinstance(document, dict):
        raise fail((), "expected a mapping with gpu_pricing and/or model_costs")
    unknown = set(document) - {"gpu_pricing", "model_costs", "other_costs", "contracts"}
    if unknown:
        key = sorted(unknown)[0]
        raise fail(
            (key,), "unknown section; the sections are gpu_pricing, model_costs, other_costs "
            "and contracts"
        )
    models = _parse_timelines(
        document.get("model_costs") or {}, "model_costs",
        "{input_tokens: <$/1K>, output_tokens: <$/1K>}", _model_price, fail,
    )
    gpus = _parse_timelines(
        document.get("gpu_pricing") or {}, "gpu_pricing",
        "{on_demand: <$/hour>, spot: ..., reserved_1y: ...}", _gpu_price, fail,
    )
    if not models and not gpus:
        raise fail((), "no prices: add model_costs (and/or gpu_pricing)")
    providers = {name: timeline[-1][1].provider for name, timeline in models.items() if timeline}
    contracts = parse_contracts(
        document.get("contracts") or [],
        lambda value, path: _parse_effective_from(value, path, fail), providers, fail)
    return PriceBook(models, gpus, _parse_other_costs(document.get("other_costs") or {}, fail),
                     contracts)


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{source}:{mark.line + 1}" if mark else source
        raise PricingError(f"{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _pricing_from_configmap(manifest: dict[str, Any], source: str) -> tuple[str, str]:
    data = manifest.get("data") or {}
    if "pricing.yaml" in data:
        return str(data["pricing.yaml"]), f"{source}#data.pricing.yaml"
    if len(data) == 1:
        (key, value), = data.items()
        return str(value), f"{source}#data.{key}"
    raise PricingError(f"{source}: ConfigMap has no data['pricing.yaml']; put the price file there")


_Fail = Any  # callable(path, message) -> PricingError
_P = TypeVar("_P", "ModelPrice", "GpuPrice", int)


def _parse_effective_from(value: Any, path: tuple[str | int, ...], fail: _Fail) -> int:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise fail(path, "effective_from must be RFC 3339, e.g. 2025-01-01T00:00:00Z") from None
    else:
        raise fail(path, "effective_from must be RFC 3339, e.g. 2025-01-01T00:00:00Z")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # YAML timestamps without offset are UTC by spec
    return epoch_ms(moment)


def _price_field(
    value: Any, path: tuple[str | int, ...], per_tokens: int, fail: _Fail, example: str = "0.0008"
) -> int:
    try:
        dollars = to_decimal(value)
    except MoneyError as exc:
        raise fail(path, f"{exc}; write a number such as {example}") from None
    if dollars < 0:
        raise fail(path, "a price cannot be negative")
    try:
        return exact_pico(_EXACT.divide(dollars, Decimal(per_tokens)))
    except MoneyError as exc:
        raise fail(path, str(exc)) from None


def _price_values(
    spec: Mapping[str, Any], path: tuple[str | int, ...], fail: _Fail
) -> dict[str, int]:
    """The model price keys of ``spec`` (an entry, a change or a tier) in pico-dollars/token."""
    values: dict[str, int] = {}
    for key, raw in spec.items():
        if key in _NOT_PRICES:
            continue
        if key in _PER_1K:
            target, per = _PER_1K[key], 1000
        elif key in _PER_1M:
            target, per = _PER_1M[key], 1_000_000
        elif key in _PER_CALL:
            target, per = _PER_CALL[key], 1
        else:
            raise fail(
                (*path, key),
                "unknown price key; use input_tokens/output_tokens/cached_input_tokens ($/1K) "
                "or input_per_1m/output_per_1m/cached_input_per_1m ($/1M), the same for "
                "cache_write_input, cache_write_1h_input, audio_input, image_input, reasoning "
                "and audio_output, or per_web_search_call ($ per call)",
            )
        if target in values:
            raise fail((*path, key), f"the {target} price is given twice ($/1K and $/1M)")
        values[target] = _price_field(raw, (*path, key), per, fail)
    return values


def _model_price(
    spec: Mapping[str, Any], base: ModelPrice | None, path: tuple[str | int, ...], fail: _Fail
) -> ModelPrice:
    values = _price_values(spec, path, fail)
    input_price = values.get("input", base.input if base else None)
    output_price = values.get("output", base.output if base else None)
    if input_price is None:
        raise fail(path, "missing input_tokens (the input price in $/1K tokens)")
    if output_price is None:
        raise fail(path, "missing output_tokens (the output price in $/1K tokens)")
    cached = values.get("cached", base.cached_input if base and "input" not in values else None)
    explicit = {**dict(base.explicit_parts if base else ()),
                **{k: v for k, v in values.items() if k in _PARTS}}
    provider = spec.get("provider", base.provider if base else "")
    if not isinstance(provider, str):
        raise fail((*path, "provider"), "provider must be a name, e.g. openai or anthropic")
    price = ModelPrice(
        input_price, output_price, input_price if cached is None else cached,
        explicit_parts=tuple(sorted(explicit.items())),
        web_search_call=values.get("web_search", base.web_search_call if base else 0),
        provider=provider,
    )
    if "tiers" in spec:
        price = replace(price, tiers=_tiers(spec["tiers"], price, (*path, "tiers"), fail))
    elif base:
        price = replace(price, tiers=base.tiers)
    return replace(
        price,
        batch=_mode_price(spec, "batch", price, base.batch if base else None, path, fail),
        service_tiers=_service_tier_prices(spec, price, base, path, fail),
    )


def _mode_price(spec: Mapping[str, Any], key: str, price: ModelPrice, inherited: ModelPrice | None,
                path: tuple[str | int, ...], fail: _Fail) -> ModelPrice | None:
    """The batch API's (or a service tier's) prices: ``discount_pct`` off every price of the
    model, and/or prices of its own; a change without the section keeps the earlier one."""
    raw = spec.get(key)
    if raw is None:
        return inherited
    mode_path = (*path, key)
    if not isinstance(raw, dict):
        raise fail(mode_path, "expected {discount_pct: <percent>} and/or prices, e.g. "
                   "{discount_pct: 50}")
    base = price
    if "discount_pct" in raw:
        base = _discounted(price, raw["discount_pct"], (*mode_path, "discount_pct"), fail)
    if not set(raw) - {"discount_pct"}:
        return base
    # Prices of its own: the long-context tiers too are its own (none unless it gives them),
    # as a model's standard tiers would bill it below the mode's rates.
    return _model_price({k: v for k, v in raw.items() if k != "discount_pct"}, replace(
        base, tiers=(), batch=None, service_tiers=()), mode_path, fail)


def _service_tier_prices(spec: Mapping[str, Any], price: ModelPrice, base: ModelPrice | None,
                         path: tuple[str | int, ...], fail: _Fail
                         ) -> tuple[tuple[str, ModelPrice], ...]:
    raw = spec.get("service_tiers")
    if raw is None:
        return base.service_tiers if base else ()
    if not isinstance(raw, dict) or set(raw) - set(_SERVICE_TIERS):
        raise fail((*path, "service_tiers"), "expected {priority: {...}, flex: {...}} (each "
                   "{discount_pct: <percent>} and/or prices)")
    tiers = []
    for tier in _SERVICE_TIERS:
        if tier in raw:
            tiered = _mode_price(raw, tier, price, None, (*path, "service_tiers"), fail)
            assert tiered is not None
            tiers.append((tier, tiered))
    return tuple(tiers)


def _discounted(price: ModelPrice, raw: Any, path: tuple[str | int, ...], fail: _Fail
                ) -> ModelPrice:
    """Every price of ``price`` with ``raw`` percent off, exactly (an error when a price
    cannot be cut to a whole pico-dollar per token)."""
    try:
        pct = to_decimal(raw)
    except MoneyError as exc:
        raise fail(path, f"{exc}; write a percentage such as 50") from None
    if not 0 <= pct <= 100:
        raise fail(path, "a discount is a percentage from 0 to 100")

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


def _tiers(
    raw: Any, base: ModelPrice, path: tuple[str | int, ...], fail: _Fail
) -> tuple[ModelTier, ...]:
    """Long-context tiers, ascending; a price a tier leaves out is the model's own."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise fail(path, "expected a list of {above_tokens: <prompt tokens>, <prices>}")
    tiers: list[ModelTier] = []
    for index, spec in enumerate(raw):
        above = spec.get("above_tokens")
        # bool is an int subclass: `above_tokens: yes` is a typo, not a boundary of 1 token.
        if isinstance(above, bool) or not isinstance(above, int) or above <= 0:
            raise fail((*path, index), "above_tokens must be a positive whole number of tokens")
        if tiers and above <= tiers[-1].above_tokens:
            raise fail((*path, index, "above_tokens"), "tiers must be in ascending above_tokens")
        values = _price_values(spec, (*path, index), fail)
        input_rate = values.get("input", base.input)
        output_rate = values.get("output", base.output)
        explicit = {**dict(base.explicit_parts),
                    **{k: v for k, v in values.items() if k in _PARTS}}
        tiers.append(ModelTier(
            above, input_rate, output_rate, values.get("cached", base.cached_input),
            PartRates.resolve(explicit, input_rate, output_rate),
        ))
    return tuple(tiers)


def _changes(
    spec: Mapping[str, Any], path: tuple[str | int, ...], fail: _Fail
) -> list[tuple[int, tuple[str | int, ...], dict[str, Any]]]:
    """(starts_ms, path, change) in date order: each change inherits from the one before it."""
    changes = spec.get("changes") or []
    if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
        raise fail((*path, "changes"), "expected a list of {effective_from: ..., <prices>}")
    dated = []
    for index, change in enumerate(changes):
        change_path = (*path, "changes", index)
        starts = _parse_effective_from(
            change.get("effective_from"), (*change_path, "effective_from"), fail
        )
        dated.append((starts, change_path, change))
    return sorted(dated, key=lambda item: item[0])


def _gpu_price(
    spec: Mapping[str, Any], base: GpuPrice | None, path: tuple[str | int, ...], fail: _Fail
) -> GpuPrice:
    values: dict[str, int] = {}
    for key, raw in spec.items():
        if key in ("changes", "effective_from"):
            continue
        if key not in TIERS:
            raise fail((*path, key), f"unknown pricing tier; use {', '.join(TIERS)} ($/hour)")
        values[key] = _price_field(raw, (*path, key), 1, fail)
    if "on_demand" not in values and base is None:
        raise fail(path, "missing on_demand (the on-demand price in $/hour)")
    on_demand = values.get("on_demand", base.on_demand if base else 0)
    # A tier left out costs what on-demand costs: no discount is better than a made-up one.
    spot = values.get("spot", base.spot if base else on_demand)
    reserved = values.get("reserved_1y", base.reserved_1y if base else on_demand)
    return GpuPrice(on_demand, spot, reserved)


def _parse_timelines(
    section: Any, section_name: str, shape: str, parse_price: Callable[..., _P], fail: _Fail
) -> dict[str, list[tuple[int, _P]]]:
    """Each entry's base price, then its dated changes, each inheriting what it leaves out."""
    if not isinstance(section, dict):
        raise fail((section_name,), f"expected a mapping of name -> {shape}")
    timelines: dict[str, list[tuple[int, _P]]] = {}
    for name, spec in section.items():
        path: tuple[str | int, ...] = (section_name, name)
        if not isinstance(spec, dict):
            raise fail(path, f"expected {shape}")
        changes = _changes(spec, path, fail)
        # Only dated changes: unpriced before the first (e.g. an import with a start date).
        dated_only = changes and not set(spec) - {"changes"}
        timeline = [] if dated_only else [(_BEGINNING, parse_price(spec, None, path, fail))]
        for starts, change_path, change in changes:
            base = timeline[-1][1] if timeline else None
            timeline.append((starts, parse_price(change, base, change_path, fail)))
        timelines[str(name)] = timeline
    return timelines


_OTHER_COST_SHAPE = "{monthly: <$ per month>, allocate_by: " + "|".join(ALLOCATE_BY) + "}"


def _parse_other_costs(section: Any, fail: _Fail) -> dict[str, OtherCost]:
    """The optional ``other_costs`` section: component name -> monthly amounts over time."""
    timelines = _parse_timelines(section, "other_costs", _OTHER_COST_SHAPE, _monthly_amount, fail)
    components: dict[str, OtherCost] = {}
    for name, spec in section.items():
        path: tuple[str | int, ...] = ("other_costs", name)
        if not isinstance(name, str) or not name.isidentifier():
            raise fail(path, "a component name must be an identifier, e.g. storage or network")
        allocate_by = spec.get("allocate_by", "cost")
        if allocate_by not in ALLOCATE_BY:
            raise fail((*path, "allocate_by"),
                       f"cannot share by {allocate_by!r}; use one of {', '.join(ALLOCATE_BY)}")
        for index, change in enumerate(spec.get("changes") or []):
            if "allocate_by" in change:
                raise fail((*path, "changes", index, "allocate_by"),
                           "allocate_by holds for the whole component; set it beside monthly")
        components[name] = OtherCost(tuple(timelines[name]), allocate_by)
    return components


def _monthly_amount(
    spec: Mapping[str, Any], base: int | None, path: tuple[str | int, ...], fail: _Fail
) -> int:
    """An other cost component's (or one of its changes') amount in pico-dollars per month."""
    for key in spec:
        if key not in ("monthly", "allocate_by", "changes", "effective_from"):
            raise fail((*path, key),
                       "unknown key; a component has monthly ($ per month), allocate_by, changes")
    if "monthly" in spec:
        return _price_field(spec["monthly"], (*path, "monthly"), 1, fail, example="4800")
    if base is None:
        raise fail(path, "missing monthly (the amount in $ per calendar month, e.g. 4800)")
    return base
