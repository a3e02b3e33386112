"""Exact money and the price book: seed file, extensions, and errors that name field and line."""

from __future__ import annotations

import calendar
import re
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import costflux
from costflux.core.money import (
    PICO_PER_DOLLAR,
    MoneyError,
    exact_pico,
    pico_to_exact_string,
    to_decimal,
)
from costflux.core.pricing import PriceBook, PricingError
from costflux.core.pricing_file import parse_pricing_text

SEED = Path(costflux.__file__).resolve().parent / "data" / "pricing.yaml"
PICO = Decimal(10) ** 12
TOKENS = st.integers(min_value=0, max_value=10_000_000)


def per_token_pico(dollars_per_1k: str, per: int = 1000) -> int:
    """Independent conversion: $/1K (or $/1M) as written -> integer pico-dollars per token."""
    value = Decimal(dollars_per_1k) / per * PICO
    assert value == value.to_integral_value()
    return int(value)


def utc_ms(*fields: int) -> int:
    """Epoch milliseconds of a UTC calendar time, by calendar.timegm."""
    return calendar.timegm((*fields, 0, 0, 0)[:9]) * 1000


def load(text: str, source: str = "p.yaml") -> PriceBook:
    return parse_pricing_text(textwrap.dedent(text), source)


# --- money ---------------------------------------------------------------------------------


def test_one_dollar_is_ten_to_the_twelve_pico() -> None:
    assert PICO_PER_DOLLAR == 1_000_000_000_000


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        (0.0008, Decimal("0.0008")),
        (0.1, Decimal("0.1")),
        (3.5, Decimal("3.5")),
        (1e-07, Decimal("1E-7")),
        (7, Decimal(7)),
        ("0.000125", Decimal("0.000125")),
        (Decimal("2.50"), Decimal("2.50")),
    ],
)
def test_to_decimal_reads_prices_as_written_not_as_binary_floats(
    written: object, expected: Decimal
) -> None:
    result = to_decimal(written)
    assert result == expected
    assert isinstance(result, Decimal)


@pytest.mark.parametrize(
    "bad", [True, False, None, [1], "abc", "", float("nan"), float("inf"), "-Infinity", "NaN"]
)
def test_to_decimal_refuses_what_is_not_a_finite_number(bad: object) -> None:
    with pytest.raises(MoneyError):
        to_decimal(bad)


@given(st.integers(min_value=-(10**27), max_value=10**27))  # up to $1e15, 28 digits
def test_exact_pico_and_exact_string_round_trip_any_pico_amount(pico: int) -> None:
    dollars = Decimal(pico).scaleb(-12)
    assert exact_pico(dollars) == pico
    text = pico_to_exact_string(pico)
    assert re.fullmatch(r"-?\d+\.\d{12}", text), text
    assert Decimal(text) == Decimal(pico) / PICO


@pytest.mark.parametrize(
    ("pico", "text"),
    [
        (0, "0.000000000000"),
        (1, "0.000000000001"),
        (-1, "-0.000000000001"),
        (1_500_000_000_000, "1.500000000000"),
        (-2_000_000_000_001, "-2.000000000001"),
    ],
)
def test_pico_to_exact_string_examples(pico: int, text: str) -> None:
    assert pico_to_exact_string(pico) == text


@pytest.mark.parametrize("dollars", ["1E-13", "0.0000000000005", "1.0000000000001"])
def test_exact_pico_refuses_amounts_finer_than_one_pico_dollar(dollars: str) -> None:
    with pytest.raises(MoneyError, match="1e-12"):
        exact_pico(Decimal(dollars))


# --- the seed file -------------------------------------------------------------------------

SEED_MODELS = {
    "llama-2-70b": ("0.0008", "0.0016"),
    "llama-2-7b": ("0.0001", "0.0002"),
    "gpt-4": ("0.03", "0.06"),
}
SEED_GPUS = {
    "nvidia-a100-80gb": ("3.5", "1.2", "2.1"),
    "nvidia-a10": ("1.5", "0.5", "0.9"),
    "nvidia-t4": ("0.5", "0.15", "0.3"),
}


def test_seed_file_loads_unchanged_with_every_price_exact() -> None:
    book = parse_pricing_text(SEED.read_text(encoding="utf-8"), str(SEED))
    assert book.models == frozenset(SEED_MODELS)
    assert book.gpu_types == frozenset(SEED_GPUS)
    for model, (input_1k, output_1k) in SEED_MODELS.items():
        for ts in (0, 1_714_564_800_000, -(10**12)):
            price = book.model_price(model, ts)
            assert price is not None
            assert price.input == per_token_pico(input_1k), model
            assert price.output == per_token_pico(output_1k), model
            assert price.cached_input == per_token_pico(input_1k), model  # default = input
    for gpu, (on_demand, spot, reserved) in SEED_GPUS.items():
        price = book.gpu_price(gpu, 1_714_564_800_000)
        assert price is not None
        assert price.on_demand == int(Decimal(on_demand) * PICO), gpu
        assert price.spot == int(Decimal(spot) * PICO), gpu
        assert price.reserved_1y == int(Decimal(reserved) * PICO), gpu
        assert price.per_hour("spot") == int(Decimal(spot) * PICO)
    assert book.model_price("gpt-5", 0) is None
    assert book.gpu_price("nvidia-h100", 0) is None


@given(input_tokens=TOKENS, output_tokens=TOKENS, data=st.data())
def test_seed_cost_equals_decimal_recomputation(
    input_tokens: int, output_tokens: int, data: st.DataObject
) -> None:
    book = parse_pricing_text(SEED.read_text(encoding="utf-8"))
    model = data.draw(st.sampled_from(sorted(SEED_MODELS)))
    cached = data.draw(st.integers(min_value=0, max_value=input_tokens))
    input_1k, output_1k = SEED_MODELS[model]
    expected_dollars = (
        Decimal(input_tokens) * Decimal(input_1k) / 1000
        + Decimal(output_tokens) * Decimal(output_1k) / 1000
    )
    price = book.model_price(model, 0)
    assert price is not None
    assert Decimal(price.cost(input_tokens, output_tokens, cached)) / PICO == expected_dollars


# --- extensions ----------------------------------------------------------------------------


@given(input_tokens=TOKENS, output_tokens=TOKENS, data=st.data())
def test_cached_price_and_per_million_keys(
    input_tokens: int, output_tokens: int, data: st.DataObject
) -> None:
    cached = data.draw(st.integers(min_value=0, max_value=input_tokens))
    book = load(
        """
        model_costs:
          per-1k:
            input_tokens: 0.003
            output_tokens: 0.015
            cached_input_tokens: 0.0003
          per-1m:
            input_per_1m: 2.5
            output_per_1m: 10
            cached_input_per_1m: 1.25
        """
    )
    cases = {
        "per-1k": (Decimal("0.003") / 1000, Decimal("0.015") / 1000, Decimal("0.0003") / 1000),
        "per-1m": (Decimal("2.5") / 10**6, Decimal(10) / 10**6, Decimal("1.25") / 10**6),
    }
    for model, (p_in, p_out, p_cached) in cases.items():
        expected = (input_tokens - cached) * p_in + cached * p_cached + output_tokens * p_out
        price = book.model_price(model, 0)
        assert price is not None
        assert Decimal(price.cost(input_tokens, output_tokens, cached)) / PICO == expected


# --- what the prompt cache saved ----------------------------------------------------------

CACHE_PRICES = """
model_costs:
  tiered:                             # Claude Sonnet 4's list prices
    input_tokens: 0.003
    output_tokens: 0.015
    cached_input_tokens: 0.0003
    tiers:
      - {above_tokens: 200000, input_tokens: 0.006, output_tokens: 0.0225,
         cached_input_tokens: 0.0006}
  flat:
    input_per_1m: 2.5
    output_per_1m: 10
    cached_input_per_1m: 1.25
  uncacheable:                        # no cached price: cached tokens cost the input price
    input_tokens: 0.001
    output_tokens: 0.002
"""


@pytest.mark.parametrize(
    ("model", "input_tokens", "cached", "saved_dollars"),
    [
        # at the boundary, the base rates: 50,000 x ($0.003 - $0.0003) / 1K
        ("tiered", 200_000, 50_000, "0.135"),
        # one token above it, the tier's rates for every token: 50,000 x ($0.006 - $0.0006) / 1K
        ("tiered", 200_001, 50_000, "0.27"),
        ("tiered", 1_000_000, 1_000_000, "5.4"),  # all cached, far above: 1M x $0.0054 / 1K
        ("tiered", 300_000, 0, "0"),
        # untiered: 1,000 x ($2.5 - $1.25) / 1M
        ("flat", 1_000, 1_000, "0.00125"),
        ("flat", 9_999_999, 3, "0.00000375"),
        ("uncacheable", 5_000, 4_000, "0"),
    ],
)
def test_cache_saving_by_hand(model: str, input_tokens: int, cached: int,
                              saved_dollars: str) -> None:
    price = load(CACHE_PRICES).model_price(model, 0)
    assert price is not None
    assert price.cache_saving(input_tokens, cached) == Decimal(saved_dollars) * PICO


@given(input_tokens=st.integers(min_value=0, max_value=400_000), data=st.data())
def test_cache_saving_uses_the_rates_of_the_tier_the_request_is_priced_at(
    input_tokens: int, data: st.DataObject
) -> None:
    cached = data.draw(st.integers(min_value=0, max_value=input_tokens))
    output_tokens = data.draw(TOKENS)
    price = load(CACHE_PRICES).model_price("tiered", 0)
    assert price is not None
    above = input_tokens > 200_000
    rate_in = Decimal("0.006" if above else "0.003") / 1000
    rate_cached = Decimal("0.0006" if above else "0.0003") / 1000
    assert Decimal(price.cache_saving(input_tokens, cached)) / PICO == cached * (
        rate_in - rate_cached
    )
    # the bill without the cache, less the bill with it
    assert price.cache_saving(input_tokens, cached) == (
        price.cost(input_tokens, output_tokens, 0) - price.cost(input_tokens, output_tokens, cached)
    )


PRICE_CHANGES = """
model_costs:
  m:
    input_tokens: 0.001
    output_tokens: 0.002
    cached_input_tokens: 0.0005
    changes:
      - effective_from: "2025-01-01T00:00:00Z"
        input_per_1m: 0.5
      - effective_from: "2025-03-01T00:00:00+02:00"
        output_tokens: 0.004
gpu_pricing:
  t4:
    on_demand: 0.5
    changes:
      - effective_from: "2025-01-01T00:00:00Z"
        spot: 0.2
"""
FIRST_CHANGE = utc_ms(2025, 1, 1, 0, 0, 0)
SECOND_CHANGE = utc_ms(2025, 2, 28, 22, 0, 0)  # 2025-03-01T00:00:00+02:00
# (event time, input, output, cached) in $/token
EXPECTED_TIMELINE = [
    (FIRST_CHANGE - 1, "0.000001", "0.000002", "0.0000005"),
    (FIRST_CHANGE, "0.0000005", "0.000002", "0.0000005"),  # input changed, cached follows it
    (SECOND_CHANGE - 1, "0.0000005", "0.000002", "0.0000005"),
    (SECOND_CHANGE, "0.0000005", "0.000004", "0.0000005"),  # only output changed
    (SECOND_CHANGE + 10**12, "0.0000005", "0.000004", "0.0000005"),
]


def assert_timeline(book: PriceBook) -> None:
    for ts, p_in, p_out, p_cached in EXPECTED_TIMELINE:
        price = book.model_price("m", ts)
        assert price is not None
        got = (price.input, price.output, price.cached_input)
        assert got == tuple(int(Decimal(p) * PICO) for p in (p_in, p_out, p_cached)), ts


def test_price_changes_apply_from_their_effective_time() -> None:
    book = parse_pricing_text(PRICE_CHANGES)
    assert_timeline(book)
    before, after = book.gpu_price("t4", FIRST_CHANGE - 1), book.gpu_price("t4", FIRST_CHANGE)
    assert before is not None and after is not None
    half = int(Decimal("0.5") * PICO)
    assert (before.on_demand, before.spot, before.reserved_1y) == (half, half, half)
    assert (after.on_demand, after.spot, after.reserved_1y) == (
        half,
        int(Decimal("0.2") * PICO),
        half,
    )


def test_price_changes_listed_out_of_order_give_the_same_timeline() -> None:
    first = PRICE_CHANGES.index('      - effective_from: "2025-01-01')
    second = PRICE_CHANGES.index('      - effective_from: "2025-03-01')
    end = PRICE_CHANGES.index("gpu_pricing:")
    reordered = (
        PRICE_CHANGES[:first]
        + PRICE_CHANGES[second:end]
        + PRICE_CHANGES[first:second]
        + PRICE_CHANGES[end:]
    )
    assert reordered != PRICE_CHANGES and sorted(reordered) == sorted(PRICE_CHANGES)
    try:
        book = parse_pricing_text(reordered)
    except PricingError:
        return  # refusing unordered changes with a clear error is also acceptable
    assert_timeline(book)


CONFIGMAP = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: costflux-pricing
data:
  pricing.yaml: |
    model_costs:
      gpt-4:
        input_tokens: 0.03
        output_tokens: 0.06
    gpu_pricing:
      nvidia-t4: {on_demand: 0.5, spot: 0.15, reserved_1y: 0.3}
  README: not a price file
"""


def test_configmap_manifest_holding_pricing_yaml_is_read() -> None:
    book = load(CONFIGMAP, "configmap.yaml")
    price = book.model_price("gpt-4", 0)
    assert price is not None
    assert (price.input, price.output) == (per_token_pico("0.03"), per_token_pico("0.06"))
    gpu = book.gpu_price("nvidia-t4", 0)
    assert gpu is not None
    assert gpu.spot == int(Decimal("0.15") * PICO)


# --- broken files --------------------------------------------------------------------------

MODEL_HEAD = "model_costs:\n  m:\n"


@pytest.mark.parametrize(
    ("text", "line", "path", "hint"),
    [
        pytest.param(
            MODEL_HEAD + "    input_tokens: -0.001\n    output_tokens: 0.002\n",
            3,
            "model_costs.m.input_tokens",
            "negative",
            id="negative-price",
        ),
        pytest.param(
            MODEL_HEAD + "    input_token: 0.001\n    output_tokens: 0.002\n",
            3,
            "model_costs.m.input_token",
            "unknown price key",
            id="typo-input_token",
        ),
        pytest.param(
            MODEL_HEAD + "    input_tokens: 0.001\n    output_tokens: abc\n",
            4,
            "model_costs.m.output_tokens",
            "not a number",
            id="not-a-number",
        ),
        pytest.param(
            MODEL_HEAD + "    input_tokens: 0.0000000001\n    output_tokens: 0.002\n",
            3,
            "model_costs.m.input_tokens",
            "finer than 1e-12",
            id="finer-than-pico",
        ),
        pytest.param(
            MODEL_HEAD + "    input_per_1m: 0.0000001\n    output_tokens: 0.002\n",
            3,
            "model_costs.m.input_per_1m",
            "finer than 1e-12",
            id="finer-than-pico-1m",
        ),
        pytest.param(
            MODEL_HEAD + "    input_tokens: .inf\n    output_tokens: 0.002\n",
            3,
            "model_costs.m.input_tokens",
            "finite",
            id="infinite",
        ),
        pytest.param(
            MODEL_HEAD + "    input_tokens: 0.001\n    input_per_1m: 1\n    output_tokens: 1\n",
            4,
            "model_costs.m.input_per_1m",
            "twice",
            id="input-price-twice",
        ),
        pytest.param(
            MODEL_HEAD
            + "    input_tokens: 0.001\n    output_tokens: 0.002\n    changes:\n"
            + "      - effective_from: next tuesday\n        input_tokens: 0.002\n",
            6,
            "model_costs.m.changes.0.effective_from",
            "RFC 3339",
            id="bad-effective_from",
        ),
        pytest.param(
            MODEL_HEAD
            + "    input_tokens: 0.001\n    output_tokens: 0.002\n    changes:\n"
            + "      - input_tokens: 0.002\n",
            None,
            "model_costs.m.changes.0.effective_from",
            "RFC 3339",
            id="missing-effective_from",
        ),
        pytest.param(
            "gpu_pricing:\n  t4:\n    on_demand: 1\n    spot: -1\n",
            4,
            "gpu_pricing.t4.spot",
            "negative",
            id="negative-gpu-price",
        ),
        pytest.param(
            "gpu_pricing:\n  t4:\n    on_demand: 1\n    spto: 1\n",
            4,
            "gpu_pricing.t4.spto",
            "unknown pricing tier",
            id="typo-tier",
        ),
        pytest.param(
            "model_costs:\n  m: {input_tokens: 0.001}\n",
            2,
            "model_costs.m",
            "missing output_tokens",
            id="missing-output-flow",
        ),
    ],
)
def test_broken_file_error_names_source_line_and_field(
    text: str, line: int | None, path: str, hint: str
) -> None:
    with pytest.raises(PricingError) as caught:
        parse_pricing_text(text, "prices.yaml")
    message = str(caught.value)
    where = f"prices.yaml:{line}" if line else "prices.yaml"
    assert message.startswith(f"{where}: {path}: "), message
    assert hint in message


@pytest.mark.parametrize(
    ("text", "path", "hint"),
    [
        pytest.param(
            MODEL_HEAD + "    input_tokens: 0.001\n",
            "model_costs.m",
            "missing output_tokens",
            id="missing-output-block",
        ),
        pytest.param(
            "model_cost:\n  m: {input_tokens: 1, output_tokens: 1}\n",
            "model_cost",
            "unknown section",
            id="unknown-section",
        ),
    ],
)
def test_error_on_a_mapping_valued_field_names_its_path_and_a_line(
    text: str, path: str, hint: str
) -> None:
    with pytest.raises(PricingError, match=rf"^prices\.yaml:\d+: {re.escape(path)}: .*{hint}"):
        parse_pricing_text(text, "prices.yaml")


def test_error_on_a_mapping_valued_field_points_at_the_key_line() -> None:
    with pytest.raises(PricingError, match=r"^prices\.yaml:2: model_costs\.m: missing output"):
        parse_pricing_text(MODEL_HEAD + "    input_tokens: 0.001\n", "prices.yaml")


def test_bad_yaml_names_the_line() -> None:
    text = "model_costs:\n  m:\n    input_tokens: 0.001: 2\n    output_tokens: 1\n"
    with pytest.raises(PricingError, match=r"^prices\.yaml:3: not valid YAML"):
        parse_pricing_text(text, "prices.yaml")


@pytest.mark.parametrize(
    "text", ["", "- a list\n", "gpu_pricing: {}\nmodel_costs: {}\n", "model_costs: [1]\n"]
)
def test_files_without_prices_are_refused(text: str) -> None:
    with pytest.raises(PricingError, match=r"^prices\.yaml"):
        parse_pricing_text(text, "prices.yaml")


@pytest.mark.parametrize(
    "data",
    ["data: {}\n", "data:\n  a.yaml: 'x'\n  b.yaml: 'y'\n", ""],
    ids=["empty-data", "two-other-keys", "no-data"],
)
def test_configmap_without_pricing_yaml_says_where_to_put_it(data: str) -> None:
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n" + data
    with pytest.raises(PricingError, match=r"^cm\.yaml: .*pricing\.yaml"):
        parse_pricing_text(manifest, "cm.yaml")


def test_error_inside_a_configmap_names_the_embedded_file_and_its_line() -> None:
    broken = CONFIGMAP.replace("output_tokens: 0.06", "output_tokens: -0.06")
    with pytest.raises(PricingError) as caught:
        parse_pricing_text(broken, "cm.yaml")
    assert str(caught.value).startswith(
        "cm.yaml#data.pricing.yaml:4: model_costs.gpt-4.output_tokens: "
    ), str(caught.value)


def test_price_with_many_significant_digits_finer_than_pico_is_refused() -> None:
    # 1.0000000000000000000000000000001 $/1K = 0.0010000000000000000000000000000001 $/token
    with pytest.raises(PricingError, match="finer than 1e-12"):
        parse_pricing_text(
            MODEL_HEAD
            + '    input_tokens: "1.0000000000000000000000000000001"\n    output_tokens: 1\n',
            "prices.yaml",
        )
