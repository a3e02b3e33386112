"""Other cost components: the ``other_costs`` section, proration by calendar month (against
hand arithmetic), and exact sharing among allocation groups by each ``allocate_by``."""

from __future__ import annotations

import calendar
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import costflux
from costflux.core.allocation import IDLE, UNALLOCATED, TimeRange, empty_allocation
from costflux.core.overheads import month_bounds, other_cost_amount, with_other_costs
from costflux.core.pricing import OtherCost, PricingError
from costflux.core.pricing_file import parse_pricing_text

DATA = Path(costflux.__file__).resolve().parent / "data"
PICO = 10**12
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def utc_ms(*fields: int) -> int:
    """Epoch milliseconds of a UTC calendar time, by calendar.timegm."""
    return calendar.timegm((*fields, 0, 0, 0)[:6]) * 1000


def monthly(dollars: int | str, allocate_by: str = "cost") -> OtherCost:
    """A component charging ``dollars`` per month since forever."""
    return OtherCost(((-(2**62), int(Decimal(dollars) * PICO)),), allocate_by)


MODELS = "model_costs:\n  m: {input_tokens: 0.001, output_tokens: 0.002}\n"


def load_other_costs(section: str) -> dict[str, OtherCost]:
    book = parse_pricing_text(MODELS + textwrap.dedent(section), "prices.yaml")
    return dict(book.other_costs)


# --- the other_costs section ---------------------------------------------------------------


def test_section_is_read_exactly_in_file_order_with_cost_as_the_default_share() -> None:
    components = load_other_costs("""\
        other_costs:
          storage: {monthly: 4800}
          network: {monthly: 1234.56, allocate_by: requests}
          operations: {monthly: "2000.000000000001", allocate_by: even}
          logs: {monthly: 0.1, allocate_by: tokens}
        """)
    assert list(components) == ["storage", "network", "operations", "logs"]
    begins = -(2**62)
    assert components == {
        "storage": OtherCost(((begins, 4_800_000_000_000_000),), "cost"),
        "network": OtherCost(((begins, 1_234_560_000_000_000),), "requests"),
        "operations": OtherCost(((begins, 2_000_000_000_000_001),), "even"),
        "logs": OtherCost(((begins, 100_000_000_000),), "tokens"),
    }


def test_without_the_section_there_are_no_other_costs() -> None:
    assert parse_pricing_text(MODELS).other_costs == {}


def test_changes_set_a_new_monthly_amount_from_their_date() -> None:
    components = load_other_costs("""\
        other_costs:
          storage:
            monthly: 3000
            changes:
              - {effective_from: "2023-11-16T00:00:00Z", monthly: 6000}
          network:
            changes:
              - {effective_from: "2023-11-16T00:00:00Z", monthly: 100}
        """)
    middle = utc_ms(2023, 11, 16)
    assert components["storage"].monthly == (
        (-(2**62), 3000 * PICO), (middle, 6000 * PICO))
    assert components["network"].monthly == ((middle, 100 * PICO),)  # nothing before


@pytest.mark.parametrize(
    ("section", "line", "path", "hint"),
    [
        pytest.param("  storage:\n    monthly: -5\n", 5, "other_costs.storage.monthly",
                     "cannot be negative", id="negative"),
        pytest.param("  storage:\n    monthly: lots\n", 5, "other_costs.storage.monthly",
                     "not a number; write a number such as 4800", id="not-a-number"),
        pytest.param("  storage:\n    monthly: yes\n", 5, "other_costs.storage.monthly",
                     "not a boolean", id="boolean"),
        pytest.param("  storage:\n    monthly: 0.0000000000001\n", 5,
                     "other_costs.storage.monthly", "finer than 1e-12", id="finer-than-pico"),
        pytest.param("  storage:\n    monthly: 5\n    allocate_by: bytes\n", 6,
                     "other_costs.storage.allocate_by",
                     "cannot share by 'bytes'; use one of cost, requests, tokens, even",
                     id="unknown-allocate_by"),
        pytest.param("  storage: {allocate_by: even}\n", 4, "other_costs.storage",
                     "missing monthly", id="missing-monthly"),
        pytest.param("  storage:\n    montly: 5\n", 5, "other_costs.storage.montly",
                     "unknown key", id="typo-key"),
        pytest.param('  "object storage": {monthly: 5}\n', 4, "other_costs.object storage",
                     "identifier", id="name-not-an-identifier"),
        pytest.param("  storage: 4800\n", 4, "other_costs.storage",
                     "expected {monthly: <$ per month>", id="bare-amount"),
        pytest.param("  storage:\n    monthly: 5\n    changes:\n"
                     '      - {effective_from: "2024-01-01T00:00:00Z", monthly: 6,'
                     ' allocate_by: even}\n',
                     7, "other_costs.storage.changes.0.allocate_by",
                     "holds for the whole component", id="allocate_by-in-a-change"),
    ],
)
def test_config_errors_name_the_field_its_line_and_the_fix(
    section: str, line: int, path: str, hint: str
) -> None:
    with pytest.raises(PricingError) as caught:
        parse_pricing_text(MODELS + "other_costs:\n" + section, "prices.yaml")
    message = str(caught.value)
    assert message.startswith(f"prices.yaml:{line}: {path}: "), message
    assert hint in message


def test_a_section_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(PricingError, match=r"^prices\.yaml:3: other_costs: expected a mapping"):
        parse_pricing_text(MODELS + "other_costs: [storage]\n", "prices.yaml")


def test_the_shipped_example_file_loads_with_the_seed_prices() -> None:
    example = parse_pricing_text((DATA / "pricing-other-costs.example.yaml").read_text())
    seed = parse_pricing_text((DATA / "pricing.yaml").read_text())
    assert example.models == seed.models and example.gpu_types == seed.gpu_types
    assert {name: cost.allocate_by for name, cost in example.other_costs.items()} == {
        "storage": "cost", "network": "tokens", "operations": "even",
        "observability": "requests"}


# --- proration ------------------------------------------------------------------------------


def test_a_span_across_a_month_boundary_is_prorated_by_each_months_length() -> None:
    # $3,100/month over 2024-01-31 12:00 .. 2024-02-01 12:00 UTC: 12 h of a 31-day January
    # = 3100 x 12 / 744 = $50 exactly; 12 h of a 29-day (leap) February = 3100 x 12 / 696
    # = $53.448275862068965..., rounded down to the pico-dollar.
    span = TimeRange(utc_ms(2024, 1, 31, 12), utc_ms(2024, 2, 1, 12))
    assert other_cost_amount(monthly(3100), span) == 50 * PICO + 53_448_275_862_068


def test_a_day_of_february_costs_more_than_a_day_of_a_31_day_month() -> None:
    # $2,800/month: a day of February 2023 (28 days) is $100; a day of March is
    # 2800 / 31 = $90.322580645161290..., rounded down.
    cost = monthly(2800)
    assert other_cost_amount(cost, TimeRange(utc_ms(2023, 2, 10), utc_ms(2023, 2, 11))) == (
        100 * PICO)
    assert other_cost_amount(cost, TimeRange(utc_ms(2023, 3, 1), utc_ms(2023, 3, 2))) == (
        90_322_580_645_161)


@pytest.mark.parametrize(("year", "month"), [(2023, 2), (2024, 2), (2023, 3), (2023, 4)])
def test_the_days_of_a_month_add_up_to_exactly_its_monthly_amount(year: int, month: int) -> None:
    cost = monthly(2800)
    start = utc_ms(year, month, 1)
    days = calendar.monthrange(year, month)[1]
    parts = [other_cost_amount(cost, TimeRange(start + d * DAY_MS, start + (d + 1) * DAY_MS))
             for d in range(days)]
    assert sum(parts) == 2800 * PICO
    assert max(parts) - min(parts) <= 1  # each day its fair share, to the pico-dollar


def test_a_change_of_amount_mid_month_charges_each_part_at_its_own_rate() -> None:
    middle = utc_ms(2023, 11, 16)  # November has 30 days: 15 at $3,000, 15 at $6,000
    cost = OtherCost(((-(2**62), 3000 * PICO), (middle, 6000 * PICO)))
    november = TimeRange(utc_ms(2023, 11, 1), utc_ms(2023, 12, 1))
    assert other_cost_amount(cost, november) == 4500 * PICO
    dated_only = OtherCost(((middle, 6000 * PICO),))
    assert other_cost_amount(dated_only, TimeRange(utc_ms(2023, 11, 1), middle)) == 0
    assert other_cost_amount(dated_only, november) == 3000 * PICO


def test_month_bounds_are_utc_calendar_months() -> None:
    span = TimeRange(utc_ms(2023, 12, 31, 23), utc_ms(2024, 2, 1, 1))
    assert list(month_bounds(span)) == [
        (utc_ms(2023, 12, 1), utc_ms(2024, 1, 1)), (utc_ms(2024, 1, 1), utc_ms(2024, 2, 1)),
        (utc_ms(2024, 2, 1), utc_ms(2024, 3, 1))]


@given(
    dollars=st.decimals(min_value=0, max_value=10**7, places=12),
    start=st.integers(min_value=utc_ms(2020, 1, 1), max_value=utc_ms(2026, 1, 1)),
    cuts=st.lists(st.integers(min_value=1, max_value=120 * DAY_MS), min_size=1, max_size=8),
)
def test_a_span_cut_into_steps_is_charged_exactly_what_the_whole_span_is(
    dollars: Decimal, start: int, cuts: list[int]
) -> None:
    cost = OtherCost(((-(2**62), int(dollars * PICO)),))
    points = sorted({start, *(start + cut for cut in cuts)})
    whole = other_cost_amount(cost, TimeRange(points[0], points[-1]))
    parts = [other_cost_amount(cost, TimeRange(a, b))
             for a, b in zip(points, points[1:], strict=False)]
    assert sum(parts) == whole


# --- sharing among groups -------------------------------------------------------------------

NOVEMBER = TimeRange(utc_ms(2023, 11, 1), utc_ms(2023, 12, 1))  # whole month: amount = monthly


def row(name: str, cost: str, requests: int, input_tokens: int, output_tokens: int,
        span: TimeRange = NOVEMBER) -> dict[str, object]:
    return {**empty_allocation(name, span), "totalCost": float(cost), "totalCostExact": cost,
            "requests": requests, "inputTokens": input_tokens, "outputTokens": output_tokens}


ROWS = {
    IDLE: row(IDLE, "60", 0, 0, 0),
    "ads": row("ads", "10", 3, 50, 50),
    "search": row("search", "30", 1, 100, 0),
}


@pytest.mark.parametrize(
    ("allocate_by", "ads", "search"),
    [("cost", "25", "75"), ("requests", "75", "25"), ("tokens", "50", "50"),
     ("even", "50", "50")],
)
def test_each_allocate_by_shares_the_amount_among_the_groups(
    allocate_by: str, ads: str, search: str
) -> None:
    answer = with_other_costs(ROWS, NOVEMBER, {"storage": monthly(100, allocate_by)})
    got = {name: answer[name]["otherCostsExact"] for name in answer}
    assert got == {IDLE: {"storage": "0.000000000000"}, "ads": {"storage": f"{ads}.000000000000"},
                   "search": {"storage": f"{search}.000000000000"}}


def test_usage_cost_stays_and_other_costs_are_shown_beside_it() -> None:
    answer = with_other_costs(ROWS, NOVEMBER, {
        "storage": monthly(100, "cost"), "network": monthly(20, "even")})
    search = answer["search"]
    assert search["totalCost"] == 30.0 and search["totalCostExact"] == "30"
    assert search["otherCosts"] == {"storage": 75.0, "network": 10.0}
    assert search["otherCost"] == 85.0 and search["otherCostExact"] == "85.000000000000"
    assert search["totalCostWithOther"] == 115.0
    assert list(answer) == sorted(answer)
    assert ROWS["search"].get("otherCost") is None  # the input is not changed


def test_a_window_without_usage_charges_everything_to_unallocated() -> None:
    answer = with_other_costs({}, NOVEMBER, {"storage": monthly(100)})
    (name, only), = answer.items()
    assert name == UNALLOCATED
    assert only["otherCostExact"] == "100.000000000000" and only["totalCost"] == 0.0
    assert only["requests"] == 0 and only["window"] == empty_allocation(name, NOVEMBER)["window"]
    idle_only = with_other_costs({IDLE: ROWS[IDLE]}, NOVEMBER, {"storage": monthly(100)})
    assert idle_only[IDLE]["otherCostExact"] == "0.000000000000"
    assert idle_only[UNALLOCATED]["otherCostExact"] == "100.000000000000"


def test_without_components_the_rows_are_unchanged() -> None:
    assert with_other_costs(ROWS, NOVEMBER, {}) == ROWS


def test_zero_weights_share_evenly() -> None:
    rows = {"a": row("a", "0", 0, 0, 0), "b": row("b", "0", 0, 0, 0)}
    answer = with_other_costs(rows, NOVEMBER, {"storage": monthly("0.000000000003")})
    assert [answer[n]["otherCostExact"] for n in "ab"] == ["0.000000000002", "0.000000000001"]


@given(
    weights=st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=12),
    pico=st.integers(min_value=0, max_value=10**18),
    allocate_by=st.sampled_from(["cost", "requests", "tokens", "even"]),
)
def test_the_shares_always_sum_exactly_to_the_components_amount(
    weights: list[int], pico: int, allocate_by: str
) -> None:
    rows = {f"g{i}": row(f"g{i}", str(Decimal(w) / PICO), w, w, w)
            for i, w in enumerate(weights)}
    cost = OtherCost(((-(2**62), pico),), allocate_by)
    answer = with_other_costs(rows, NOVEMBER, {"storage": cost})
    total = sum(Decimal(str(r["otherCostExact"])) for r in answer.values())
    assert total * PICO == pico  # a whole month: exactly the monthly amount
