"""The whole bill of one request: every kind of token at its own rate, the request's mode
(batch API, service tier), web searches, and a negotiated discount. Pure.

Most requests carry only input, output and cache-read counts and no contract applies: ingest
prices those with ``ModelPrice.cost`` alone. A request with any other kind of usage, or one a
contract covers, is billed here, and its row gets the sums ``BILL_FIELDS`` name.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Final

from costflux.core.pricing import ModelPrice
from costflux.schemas.usage import INPUT_PARTS, OUTPUT_PARTS

__all__ = ["BILL_FIELDS", "BILLED_FIELDS", "bill", "request_cost"]

#: Usage-event fields that make a request's bill more than input, output and cache reads.
BILLED_FIELDS: Final = frozenset(
    {*INPUT_PARTS, *OUTPUT_PARTS, "web_search_calls", "batch", "service_tier"}
    - {"cached_input_tokens"})

#: What a billed request adds to its row, after the plain sums (``rows.UsageSums`` order):
#: the contract's discount, counts of each kind and mode, and the list cost of each kind
#: beyond text (text and cache reads are the rest of the list cost).
BILL_FIELDS: Final = (
    "contract_discount_pico",
    "cache_write_input_tokens", "cache_write_1h_input_tokens", "audio_input_tokens",
    "image_input_tokens", "reasoning_tokens", "audio_output_tokens", "web_search_calls",
    "batch_requests", "priority_requests", "flex_requests",
    "cache_write_cost_pico", "audio_cost_pico", "image_cost_pico", "reasoning_cost_pico",
    "web_search_cost_pico",
)


def request_cost(price: ModelPrice, event: Mapping[str, Any], discount: Fraction | None = None
                 ) -> tuple[int, tuple[int, ...] | None]:
    """(cost, sums) of one request: the plain price of input, output and cache reads when
    that is all it has and no contract applies (sums None), else its whole ``bill``.

    >>> from costflux.core.pricing import ModelPrice
    >>> request_cost(ModelPrice(3_000_000, 15_000_000, 300_000),
    ...              {"input_tokens": 1000, "output_tokens": 10})
    (3150000000, None)
    """
    if discount is None and BILLED_FIELDS.isdisjoint(event):
        return price.cost(event["input_tokens"], event["output_tokens"],
                          event.get("cached_input_tokens", 0)), None
    return bill(price, event, discount)


def bill(price: ModelPrice, event: Mapping[str, Any], discount: Fraction | None
         ) -> tuple[int, tuple[int, ...]]:
    """(cost, sums): what the request pays in pico-dollars, after ``discount`` (the share of
    the list cost a contract takes off), and its ``BILL_FIELDS`` sums.

    The mode picks the price list (``ModelPrice.for_mode``), the prompt size its long-context
    tier, as ``ModelPrice.cost`` does; each kind of token is then billed at its rate, text
    being what the totals leave. A discount is rounded half to even to the pico-dollar, per
    request.

    >>> from costflux.core.pricing import ModelPrice
    >>> price = ModelPrice(3_000_000, 15_000_000, 300_000,
    ...                    explicit_parts=(("cache_write", 3_750_000),))
    >>> bill(price, {"input_tokens": 1000, "output_tokens": 10, "cached_input_tokens": 200,
    ...              "cache_write_input_tokens": 500}, None)[0]
    2985000000
    """
    batch = bool(event.get("batch", False))
    service_tier = event.get("service_tier", "default")
    mode = price.for_mode(batch, service_tier)
    input_tokens, output_tokens = event["input_tokens"], event["output_tokens"]
    rates = mode.rates_for(input_tokens)
    parts = rates.parts
    cached = event.get("cached_input_tokens", 0)
    write_5m = event.get("cache_write_input_tokens", 0)
    write_1h = event.get("cache_write_1h_input_tokens", 0)
    audio_in = event.get("audio_input_tokens", 0)
    image_in = event.get("image_input_tokens", 0)
    reasoning = event.get("reasoning_tokens", 0)
    audio_out = event.get("audio_output_tokens", 0)
    searches = event.get("web_search_calls", 0)
    text_in = input_tokens - cached - write_5m - write_1h - audio_in - image_in
    text_out = output_tokens - reasoning - audio_out

    cache_write_cost = write_5m * parts.cache_write + write_1h * parts.cache_write_1h
    audio_cost = audio_in * parts.audio_input + audio_out * parts.audio_output
    image_cost = image_in * parts.image_input
    reasoning_cost = reasoning * parts.reasoning
    search_cost = searches * mode.web_search_call
    list_cost = (text_in * rates.input + cached * rates.cached_input + text_out * rates.output
                 + cache_write_cost + audio_cost + image_cost + reasoning_cost + search_cost)
    taken = round(list_cost * discount) if discount else 0  # round() is half to even
    return list_cost - taken, (
        taken,
        write_5m, write_1h, audio_in, image_in, reasoning, audio_out, searches,
        int(batch), int(not batch and service_tier == "priority"),
        int(not batch and service_tier == "flex"),
        cache_write_cost, audio_cost, image_cost, reasoning_cost, search_cost,
    )
