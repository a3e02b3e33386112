"""The whole bill: each kind of usage at its own rate, modes, web searches and contracts,
against a Decimal computation written from the price file as text."""

from __future__ import annotations

import textwrap
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costflux.core.bill import bill
from costflux.core.pricing import PricingError
from costflux.core.pricing_file import parse_pricing_text

PRICES = textwrap.dedent("""\
    model_costs:
      m:
        provider: acme
        input_per_1m: 3
        output_per_1m: 15
        cached_input_per_1m: 0.3
        cache_write_input_per_1m: 3.75
        cache_write_1h_input_per_1m: 6
        audio_input_per_1m: 40
        image_input_per_1m: 5
        reasoning_per_1m: 20
        audio_output_per_1m: 80
        per_web_search_call: 0.01
        batch: {discount_pct: 50}
        service_tiers:
          priority: {input_per_1m: 6, output_per_1m: 30}
          flex: {discount_pct: 50}
        tiers:
          - {above_tokens: 200000, input_per_1m: 6, output_per_1m: 22.5}
      plain:
        provider: acme
        input_per_1m: 1
        output_per_1m: 2
    contracts:
      - provider: acme
        discount_pct: 10
      - model: m
        discount_pct: 12.5
        effective_from: "2025-01-01T00:00:00Z"
        effective_until: "2026-01-01T00:00:00Z"
""")
M = Decimal(1_000_000)
#: $/1M as PRICES writes them: base, and the long-context tier (what it leaves out inherits).
BASE = {"input": "3", "output": "15", "cached": "0.3", "cache_write": "3.75",
        "cache_write_1h": "6", "audio_input": "40", "image_input": "5", "reasoning": "20",
        "audio_output": "80"}
TIER = {**BASE, "input": "6", "output": "22.5"}
PRIORITY = {**BASE, "input": "6", "output": "30", "cached": "6"}  # cached follows input
JAN_2025 = 1_735_689_600_000


def by_hand(event: dict[str, int | bool | str], discount: Decimal) -> tuple[Decimal, Decimal]:
    """(list, paid) in dollars, from PRICES as written."""
    rates = dict(TIER if event["input_tokens"] > 200_000 else BASE)  # type: ignore[operator]
    scale = Decimal(1)
    if event.get("batch"):
        scale = Decimal("0.5")
    elif event.get("service_tier") == "priority":
        rates = dict(PRIORITY)  # its own prices, without the model's long-context tiers
    elif event.get("service_tier") == "flex":
        scale = Decimal("0.5")
    parts = {k: int(event.get(f"{k}_tokens", 0)) for k in (  # type: ignore[call-overload]
        "cache_write_input", "cache_write_1h_input", "audio_input", "image_input",
        "reasoning", "audio_output")}
    cached = int(event.get("cached_input_tokens", 0))  # type: ignore[call-overload]
    text_in = int(event["input_tokens"]) - cached - sum(  # type: ignore[call-overload]
        parts[k] for k in ("cache_write_input", "cache_write_1h_input", "audio_input",
                           "image_input"))
    text_out = int(event["output_tokens"]) - parts["reasoning"] - parts["audio_output"]  # type: ignore[call-overload]
    per_1m = (text_in * Decimal(rates["input"]) + cached * Decimal(rates["cached"])
              + parts["cache_write_input"] * Decimal(rates["cache_write"])
              + parts["cache_write_1h_input"] * Decimal(rates["cache_write_1h"])
              + parts["audio_input"] * Decimal(rates["audio_input"])
              + parts["image_input"] * Decimal(rates["image_input"])
              + parts["reasoning"] * Decimal(rates["reasoning"])
              + parts["audio_output"] * Decimal(rates["audio_output"])
              + text_out * Decimal(rates["output"]))
    listed = (per_1m / M + int(event.get("web_search_calls", 0))  # type: ignore[call-overload]
              * Decimal("0.01")) * scale
    taken = (listed * discount).quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN)
    return listed, listed - taken


@st.composite
def events(draw: st.DrawFn) -> dict[str, int | bool | str]:
    input_tokens = draw(st.integers(0, 400_000))
    output_tokens = draw(st.integers(0, 50_000))
    event: dict[str, int | bool | str] = {"input_tokens": input_tokens,
                                          "output_tokens": output_tokens}
    left = input_tokens
    for name in ("cached_input_tokens", "cache_write_input_tokens",
                 "cache_write_1h_input_tokens", "audio_input_tokens", "image_input_tokens"):
        event[name] = draw(st.integers(0, left))
        left -= int(event[name])
    left = output_tokens
    for name in ("reasoning_tokens", "audio_output_tokens"):
        event[name] = draw(st.integers(0, left))
        left -= int(event[name])
    event["web_search_calls"] = draw(st.integers(0, 20))
    mode = draw(st.sampled_from(["default", "batch", "priority", "flex"]))
    if mode == "batch":
        event["batch"] = True
    else:
        event["service_tier"] = mode
    return event


@settings(max_examples=300, deadline=None)
@given(events(), st.booleans())
def test_every_kind_mode_and_contract_equals_a_decimal_computation(
    event: dict[str, int | bool | str], in_2025: bool,
) -> None:
    book = parse_pricing_text(PRICES)
    ts_ms = JAN_2025 + 1000 if in_2025 else JAN_2025 - 1000
    price = book.model_price("m", ts_ms)
    assert price is not None
    share = book.discount("m", price, ts_ms)
    cost, sums = bill(price, event, share)
    listed, paid = by_hand(event, Decimal("0.125") if in_2025 else Decimal("0.10"))
    assert Decimal(cost) / 10**12 == paid
    assert Decimal(cost + sums[0]) / 10**12 == listed  # the discount is the difference


def test_a_plain_request_billed_in_full_costs_what_the_fast_path_says() -> None:
    price = parse_pricing_text(PRICES).model_price("plain", 0)
    assert price is not None
    assert bill(price, {"input_tokens": 1000, "output_tokens": 10,
                        "cached_input_tokens": 100}, None) == (
        price.cost(1000, 10, 100), (0,) * 16)


def test_a_model_contract_wins_over_its_providers_only_while_in_force() -> None:
    book = parse_pricing_text(PRICES)
    price = book.model_price("m", 0)
    assert price is not None
    assert book.discount("m", price, JAN_2025) == Decimal("0.125")
    assert book.discount("m", price, JAN_2025 - 1) == Decimal("0.1")
    plain = book.model_price("plain", 0)
    assert plain is not None
    assert book.discount("plain", plain, JAN_2025) == Decimal("0.1")


@pytest.mark.parametrize(("text", "says"), [
    ("contracts: [{model: nope, discount_pct: 5}]", "contracts.0.model: 'nope' is not in"),
    ("contracts: [{provider: nobody, discount_pct: 5}]", "no model in model_costs has"),
    ("contracts: [{model: plain, provider: acme, discount_pct: 5}]", "either model or"),
    ("contracts: [{model: plain, discount_pct: 120}]", "from 0 to 100"),
    ("contracts: [{model: plain, discount_pct: 5, until: 2026}]", "unknown key"),
])
def test_contract_errors_name_the_field_and_line(text: str, says: str) -> None:
    document = "model_costs:\n  plain: {provider: acme, input_tokens: 1, output_tokens: 2}\n" + text
    with pytest.raises(PricingError, match=says) as error:
        parse_pricing_text(document, "pricing.yaml")
    assert str(error.value).startswith("pricing.yaml:3: contracts")


def test_a_discount_that_leaves_a_fraction_of_a_pico_dollar_is_refused() -> None:
    with pytest.raises(PricingError, match="give the discounted prices themselves"):
        parse_pricing_text("model_costs:\n  m:\n    input_per_1m: 0.000001\n"
                           "    output_per_1m: 1\n    batch: {discount_pct: 50}\n")


def test_a_change_keeps_the_kinds_it_does_not_price() -> None:
    book = parse_pricing_text(textwrap.dedent("""\
        model_costs:
          m:
            input_per_1m: 3
            output_per_1m: 15
            cache_write_input_per_1m: 3.75
            changes:
              - {effective_from: "2025-06-01T00:00:00Z", input_per_1m: 2}
    """))
    later = book.model_price("m", 1_800_000_000_000)
    assert later is not None
    assert (later.input, later.parts.cache_write, later.parts.audio_input) == (
        2_000_000, 3_750_000, 2_000_000)
