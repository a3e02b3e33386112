"""The price book: every model's, GPU type's and other cost's price, each a timeline of
effective-from dates, looked up by event time. Prices are whole pico-dollars per token (call,
GPU-hour, calendar month); ``costflux.core.pricing_file`` reads the price file into a book.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from costflux.core.contracts import Contract, discount_at
from costflux.core.errors import ConfigError

__all__ = [
    "ALLOCATE_BY", "TIERS", "GpuPrice", "ModelPrice", "ModelTier", "OtherCost", "PartRates",
    "PriceBook", "PricingError",
]

#: The GPU pricing tiers, each a field of ``GpuPrice`` (and a key of the price file).
TIERS = ("on_demand", "spot", "reserved_1y")
_END_OF_TIME = 2**62


class PricingError(ConfigError):
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
