"""`costflux reconcile`'s pure part: the provider report parsers on fixtures built from the
providers' published references (tests/fixtures/provider_reports/SOURCE.md), the comparison
against figures written out by hand and an independent Decimal computation, and rendering."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costflux.core.reconcile import (
    DAY_MS,
    AllocationQuery,
    CostfluxCosts,
    Period,
    ProviderReport,
    ReportError,
    costflux_costs,
    parse_amount_option,
    parse_name_map,
    parse_report,
    plan_queries,
    reconcile,
    render,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "provider_reports"
Key = tuple[str, str, str | None]


def report_of(name: str, form: str | None = None, **options: str) -> ProviderReport:
    return parse_report((FIXTURES / name).read_text(), form, name, **options)


def day(text: str) -> Period:
    start = int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 1000
    return Period(start, start + DAY_MS)


def provider_totals(report: ProviderReport, **options: object) -> dict[Key, Decimal]:
    """The report's figures per (day, model, project), through reconcile with an empty
    costflux side (every row provider-only)."""
    result = reconcile(report, CostfluxCosts(), **options)  # type: ignore[arg-type]
    assert all(row.in_provider and not row.in_costflux for row in result.rows)
    return {(r.period.label, r.model, r.project): r.provider for r in result.rows}


def answers_for(report: ProviderReport, costs: Mapping[Key, str],
                field: str = "tokenCostExact") -> list[tuple[AllocationQuery, list[object]]]:
    """What a worker holding ``costs`` (day, model, project -> exact dollars) answers to the
    queries the report plans, built the way the allocation API builds its sets."""
    answers: list[tuple[AllocationQuery, list[object]]] = []
    for query in plan_queries(report.periods, report.by_project):
        sets: list[object] = []
        for period in query.periods:
            rows: dict[str, dict[str, str]] = {}
            for (label, model, project), cost in costs.items():
                if label == period.label:
                    name = f"{project}/{model}" if report.by_project else model
                    start = datetime.fromtimestamp(period.start_ms / 1000, UTC)
                    rows[name] = {"name": name, "start": start.isoformat()[:19] + "Z",
                                  field: cost, "totalCostExact": cost}
            sets.append(rows)
        if "step" not in query.params and not any(sets):
            sets = []
        answers.append((query, sets))
    return answers


# ------------------------------------------------------------------------------ parsers


def test_openai_reference_example_is_one_day_total_without_models() -> None:
    report = report_of("openai_costs_reference.json")
    assert report.format == "openai" and not report.by_model and not report.by_project
    assert report.periods == {day("2024-11-01")}
    assert provider_totals(report) == {("2024-11-01", "*", None): Decimal("0.06")}


def test_openai_grouped_json_lines_by_model_and_project() -> None:
    report = report_of("openai_costs_grouped.jsonl")
    assert report.by_model and report.by_project and report.notes == ()
    # The empty third bucket is a covered day with no provider cost.
    assert report.periods == {day("2024-11-01"), day("2024-11-02"), day("2024-11-03")}
    assert provider_totals(report) == {
        ("2024-11-01", "gpt-4o-2024-08-06", "proj_abc"): Decimal("1.25") + Decimal("2.5"),
        ("2024-11-01", "gpt-4o-mini-2024-07-18", "proj_def"):
            Decimal("0.0315") + Decimal("0.00375") + Decimal("0.126"),
        ("2024-11-02", "gpt-4o-2024-08-06", "proj_abc"): Decimal("0.75") + Decimal("1.5"),
        ("2024-11-02", "Image models", "proj_abc"): Decimal("0.06"),
    }


def test_openai_pages_as_a_json_array_equal_the_json_lines() -> None:
    pages = [json.loads(line) for line in
             (FIXTURES / "openai_costs_grouped.jsonl").read_text().splitlines()]
    as_array = parse_report(json.dumps(pages, indent=2), "openai", "pages.json")
    assert provider_totals(as_array) == provider_totals(report_of("openai_costs_grouped.jsonl"))


def test_openai_amounts_are_exact_decimals_whether_numbers_or_strings() -> None:
    # 0.1 + 0.2 is 0.30000000000000004 in floats; the live API has also been seen sending
    # amount.value as a string, including 0E-6176 and 39-digit values.
    page = {"object": "page", "has_more": False, "next_page": None, "data": [
        {"object": "bucket", "start_time": 1730419200, "end_time": 1730505600, "results": [
            {"object": "organization.costs.result", "amount": {"value": 0.1, "currency": "usd"},
             "line_item": "gpt-4o-mini-2024-07-18, input", "project_id": None},
            {"object": "organization.costs.result", "amount": {"value": 0.2, "currency": "usd"},
             "line_item": "gpt-4o-mini-2024-07-18, output", "project_id": None},
            {"object": "organization.costs.result",
             "amount": {"value": "0E-6176", "currency": "usd"},
             "line_item": "gpt-4o-mini-2024-07-18, cached input", "project_id": None},
            {"object": "organization.costs.result",
             "amount": {"value": "0.000004500000000000000000000000000000001", "currency": "USD"},
             "line_item": "gpt-4o-mini-2024-07-18, input", "project_id": None}]}]}
    totals = provider_totals(parse_report(json.dumps(page), None, "costs.json"))
    assert totals == {("2024-11-01", "gpt-4o-mini-2024-07-18", None):
                      Decimal("0.300004500000000000000000000000000000001")}


def test_anthropic_reference_example_amount_is_in_cents() -> None:
    report = report_of("anthropic_cost_report_reference.json")
    assert report.format == "anthropic"
    # "123.78912" cents is $1.2378912.
    assert provider_totals(report) == {
        ("2025-08-01", "claude-sonnet-4-20250514", "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ"):
            Decimal("1.2378912")}
    assert any("has_more: true" in note for note in report.notes)


def test_anthropic_grouped_by_workspace_and_description() -> None:
    report = report_of("anthropic_cost_report_grouped.json")
    workspace = "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ"
    assert provider_totals(report) == {
        ("2025-08-01", "claude-sonnet-4-20250514", workspace):
            (Decimal("123.78912") + Decimal("450.5") + Decimal("3.6")) / 100,
        # The default workspace (workspace_id null) is costflux's usage with no project label.
        ("2025-08-01", "claude-3-5-haiku-20241022", "__unallocated__"):
            (Decimal("8") + Decimal("32.25")) / 100,
        ("2025-08-02", "claude-sonnet-4-20250514", workspace):
            (Decimal("61.89456") + Decimal("225.25")) / 100,
    }
    assert report.notes == ("left out the report's non-token costs (web_search $1.00): "
                            "costflux prices tokens",)


def test_focus_daily_export_effective_cost_by_default_and_usage_rows_only() -> None:
    report = report_of("focus_daily.csv")
    assert report.format == "focus"
    # The 13:00-14:00 row counts for its day; Credit and Tax rows are left out, and said so.
    assert provider_totals(report) == {
        ("2025-05-01", "gpt-4o", "search"): Decimal("9.50"),
        ("2025-05-01", "gpt-4o-mini", "ads"): Decimal("1.234567"),
        ("2025-05-02", "gpt-4o", "search"): Decimal("4.75"),  # model from ResourceId
        ("2025-05-02", "gpt-4o-mini", "__unallocated__"): Decimal("0.10"),
    }
    assert report.notes == ("compared the FOCUS column EffectiveCost",
                            "left out the rows that are not token usage "
                            "(Credit -$2.00, Tax $0.80)")
    billed = report_of("focus_daily.csv", cost_column="BilledCost")
    assert provider_totals(billed)[("2025-05-01", "gpt-4o", "search")] == Decimal("10.00")
    by_team = provider_totals(report_of("focus_daily.csv", project_tag="team"))
    assert ("2025-05-01", "gpt-4o", "search") in by_team
    assert ("2025-05-02", "gpt-4o", "__unallocated__") in by_team  # no team tag on that row


def test_focus_spec_example_monthly_rows_model_from_sku_price_details() -> None:
    report = report_of("focus_spec_multi_model_usage.csv")
    may = "2025-05-01T00:00:00Z/2025-06-01T00:00:00Z"
    assert provider_totals(report) == {
        (may, "solora-atlas-5.4-mini", None): Decimal("4.50"),
        (may, "solora-atlas-5.5", None): Decimal("100.00"),
    }
    # A month is compared as one period: one query without step.
    [query] = plan_queries(report.periods, report.by_project)
    assert dict(query.params) == {"window": "2025-05-01T00:00:00Z,2025-06-01T00:00:00Z",
                                  "aggregate": "model"}


def test_focus_with_a_byte_order_mark_and_crlf_lines() -> None:
    text = "\ufeff" + (FIXTURES / "focus_daily.csv").read_text().replace("\n", "\r\n")
    assert provider_totals(parse_report(text, None, "x.csv")) == provider_totals(
        report_of("focus_daily.csv"))


def test_generic_csv_sums_rows_and_covers_every_day_of_its_range() -> None:
    report = report_of("generic.csv")
    assert report.format == "csv"
    assert report.periods == {day("2025-03-01"), day("2025-03-02"), day("2025-03-03")}
    assert provider_totals(report) == {
        ("2025-03-01", "gpt-4o", "ads"): Decimal("1.5"),
        ("2025-03-01", "gpt-4o", "search"): Decimal("13.000"),
        ("2025-03-03", "claude-sonnet-4", "__unallocated__"): Decimal("0.25"),
    }


@pytest.mark.parametrize(("name", "text", "form", "message"), [
    ("r.csv", "date,model,cost\n2025-03-01,gpt-4o,1\n2025-13-01,gpt-4o,1\n", None,
     "r.csv: line 3, column date: '2025-13-01' is not a date; write YYYY-MM-DD"),
    ("r.csv", "date,model,cost\n2025-03-01,gpt-4o,1.2.3\n", None,
     "r.csv: line 2, column cost: '1.2.3' is not a number"),
    ("r.csv", "date,model,cost\n2025-03-01,,1\n", None, "r.csv: line 2, column model: empty"),
    ("r.csv", "date,model,cost,currency\n2025-03-01,gpt-4o,1,EUR\n", None,
     "r.csv: line 2, column currency: currency 'EUR'; costflux prices in USD"),
    ("r.csv", "day,model,cost\n2025-03-01,gpt-4o,1\n", "csv",
     "r.csv: line 1: missing column(s) date; the header must be date,model,project,cost"),
    ("r.csv", "when,what\n1,2\n", None, "r.csv: line 1: cannot tell the CSV's format"),
    ("r.csv", "date,model,cost\n", "openai", "r.csv: --format openai expects the API's JSON"),
    ("r.json", '{"object": "page", "data": []}', "focus",
     "r.json: --format focus expects a CSV file, but this is JSON"),
    ("r.json", '{"object": "page",\n "data": [}', None,
     "r.json: line 2, column 11: not valid JSON"),
    ("r.json", '{"object": "page", "data": [{"object": "bucket", "start_time": 1730419200, '
     '"end_time": 1730505600, "results": [{"object": "organization.usage.completions.result",'
     ' "input_tokens": 5}]}]}', None,
     "r.json: page 1 (line 1), data[0].results[0]: object is "
     "'organization.usage.completions.result', expected 'organization.costs.result' (a usage "
     "report"),
    ("r.json", '{"object": "page", "data": [{"object": "bucket", "start_time": 1730419200, '
     '"end_time": 1730505600, "results": [{"object": "organization.costs.result", '
     '"amount": {"value": 1, "currency": "eur"}}]}]}', None,
     "r.json: page 1 (line 1), data[0].results[0].amount.currency: currency 'eur'"),
    ("r.json", '{"data": [{"starting_at": "2025-08-01T00:00:00Z", "ending_at": "2025-08-02", '
     '"results": [{"amount": 12.5, "currency": "USD"}, {"amount": null, "currency": "USD"}]}]}',
     None, "r.json: page 1 (line 1), data[0].results[1].amount: expected an amount in cents"),
    ("r.json", '{"data": []}', None, "r.json: cannot tell whose report this is"),
    ("r.json", "", "openai", "r.json: --format openai expects the API's JSON"),
    ("r.csv", "BilledCost,ChargePeriodStart\n1,2025-05-01T00:00:00Z\n", None,
     "r.csv: line 1: no ChargePeriodEnd column"),
    ("r.csv", "ChargePeriodStart,ChargePeriodEnd,EffectiveCost\n"
     "2025-05-01T00:00:00Z,2025-06-01T00:00:00Z,3\n2025-05-02T00:00:00Z,2025-05-03T00:00:00Z,1\n",
     None, "r.csv: line 3: period 2025-05-02 overlaps "
     "2025-05-01T00:00:00Z/2025-06-01T00:00:00Z; export the report at one granularity"),
    ("r.csv", "ChargePeriodStart,ChargePeriodEnd,EffectiveCost,Tags\n"
     "2025-05-01T00:00:00Z,2025-05-02T00:00:00Z,3,[1]\n", None,
     "r.csv: line 2, column Tags: expected a JSON object"),
])
def test_bad_reports_name_the_file_the_place_and_the_fix(
        name: str, text: str, form: str | None, message: str) -> None:
    with pytest.raises(ReportError) as caught:
        parse_report(text, form, name)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_bucket_in_two_pages_is_refused() -> None:
    line = (FIXTURES / "openai_costs_grouped.jsonl").read_text().splitlines()[0]
    with pytest.raises(ReportError, match=r"page 2 \(line 2\), data\[0\]: bucket 2024-11-01 "
                       r"appears twice \(also at page 1 \(line 1\), data\[0\]\)"):
        parse_report(line + "\n" + line + "\n", None, "r.jsonl")


def test_maps_and_options() -> None:
    assert parse_name_map({"proj_abc": "search", 42: "ads"}, "m.yaml", "--project-map") == {
        "proj_abc": "search", "42": "ads"}
    assert parse_name_map(None, "m.yaml", "--project-map") == {}
    with pytest.raises(ReportError, match=r"m.yaml: --project-map entry 'proj_abc': the "
                       r"costflux name must be a non-empty string, got \['x'\]"):
        parse_name_map({"proj_abc": ["x"]}, "m.yaml", "--project-map")
    with pytest.raises(ReportError, match="m.yaml: --model-map must be a mapping"):
        parse_name_map(["a"], "m.yaml", "--model-map")
    assert parse_amount_option("0.5%", "--tolerance") == Decimal("0.5")
    for bad in ("-1", "x", "nan", "inf"):
        with pytest.raises(ReportError, match=r"--tolerance .*: expected a non-negative number"):
            parse_amount_option(bad, "--tolerance")


# ------------------------------------------------------------------------------ costflux side


def test_queries_cover_runs_of_days_with_step_and_other_periods_alone() -> None:
    days = [Period(d * DAY_MS, (d + 1) * DAY_MS) for d in [*range(40), 50]]
    month = Period(100 * DAY_MS, 131 * DAY_MS)
    queries = plan_queries([*days, month], by_project=False)
    assert [(q.periods[0].start_ms // DAY_MS, len(q.periods), q.params.get("step"))
            for q in queries] == [(0, 31, "1d"), (31, 9, "1d"), (50, 1, "1d"), (100, 1, None)]
    assert queries[0].params["window"] == "1970-01-01T00:00:00Z,1970-02-01T00:00:00Z"
    assert plan_queries(days[:1], by_project=True)[0].params["aggregate"] == (
        "label:project,model")


def test_token_cost_is_read_exactly_and_total_cost_is_the_noted_fallback() -> None:
    report = report_of("generic.csv")
    costs: dict[Key, str] = {("2025-03-01", "gpt-4o", "search"): "13.000000000001",
             ("2025-03-01", "meta-llama/Llama-3-70b", "ads"): "0.5"}
    side = costflux_costs(answers_for(report, costs), by_project=True)
    assert side.fallback_rows == 0
    assert side.costs == {
        (day("2025-03-01"), "gpt-4o", "search"): Decimal("13.000000000001"),
        (day("2025-03-01"), "meta-llama/Llama-3-70b", "ads"): Decimal("0.5")}
    older = costflux_costs(answers_for(report, costs, field="totalCostOnly"), by_project=True)
    assert older.fallback_rows == 2 and older.costs == side.costs
    result = reconcile(report, older)
    assert result.costflux_field == "totalCostExact"
    assert any("serves no tokenCostExact" in note for note in result.notes)
    assert reconcile(report, side).costflux_field == "tokenCostExact"


def test_answers_that_do_not_fit_the_query_are_refused() -> None:
    report = report_of("generic.csv")
    [(query, sets)] = answers_for(report, {})
    with pytest.raises(ValueError, match="answered 2 sets"):
        costflux_costs([(query, sets[:2])], by_project=True)
    wrong_day = {"search/gpt-4o": {"name": "search/gpt-4o", "start": "2025-03-02T00:00:00Z",
                                   "tokenCostExact": "1"}}
    with pytest.raises(ValueError, match="answered 2025-03-02T00:00:00Z for the day 2025-03-01"):
        costflux_costs([(query, [wrong_day, {}, {}])], by_project=True)
    with pytest.raises(ValueError, match="expected an exact decimal string"):
        costflux_costs([(query, [{"m": {"name": "a/m", "tokenCostExact": 1.5}}, {}, {}])],
                       by_project=True)


# ------------------------------------------------------------------------------ comparison

MODELS = ("gpt-4o", "gpt-4o-mini", "o3")
DAYS = ("2025-06-01", "2025-06-02", "2025-06-03", "2025-06-04")


def csv_report(costs: Mapping[Key, Decimal]) -> ProviderReport:
    lines = ["date,model,project,cost"]
    lines += [f"{d},{m},{p or ''},{c}" for (d, m, p), c in costs.items()]
    return parse_report("\n".join(lines) + "\n", "csv", "report.csv")


def ours_exact() -> dict[Key, Decimal]:
    """costflux's figures: distinct pico-dollar amounts per day, model and project."""
    return {(d, m, p): Decimal(1000 + 37 * i + 11 * j + (k * 5)).scaleb(-2) + Decimal("1e-12")
            for i, d in enumerate(DAYS) for j, m in enumerate(MODELS)
            for k, p in enumerate(("search", "ads"))}


def test_a_planted_3_percent_difference_is_that_row_and_no_other() -> None:
    ours = ours_exact()
    theirs = dict(ours)
    planted = ("2025-06-03", "gpt-4o-mini", "ads")
    theirs[planted] = ours[planted] * Decimal("1.03")
    report = csv_report(theirs)
    side = costflux_costs(answers_for(report, {k: str(v) for k, v in ours.items()}), True)
    result = reconcile(report, side)
    assert result.exit_code == 1
    [row] = result.mismatches
    assert (row.period.label, row.model, row.project) == planted
    assert (row.costflux, row.provider) == (ours[planted], ours[planted] * Decimal("1.03"))
    assert row.difference == ours[planted] - ours[planted] * Decimal("1.03")
    assert row.percent is not None and row.percent.quantize(Decimal("0.0001")) == Decimal(
        "-2.9126")  # -3/103
    assert row.status(result.tolerance_pct) == "over"
    assert len(result.rows) == len(ours) and all(
        r.difference == 0 for r in result.rows if r is not row)
    identical = reconcile(csv_report(ours), side)
    assert identical.exit_code == 0 and identical.mismatches == []


@pytest.mark.parametrize(("provider", "tolerance", "exit_code"), [
    ("200", "0.5", 0),                    # exactly 0.5 % below costflux's 201: not over
    ("200.000000000001", "0.5", 0),       # a pico-dollar less difference
    ("199.999999999999", "0.5", 1),       # a pico-dollar more: over
    ("201", "0", 0),                      # identical passes a zero tolerance
    ("201.000000000001", "0", 1),
    ("100", "101", 0),                    # 101 % allowed
])
def test_tolerance_boundaries_are_exact(provider: str, tolerance: str, exit_code: int) -> None:
    report = csv_report({("2025-06-01", "gpt-4o", None): Decimal(provider)})
    ours: dict[Key, str] = {("2025-06-01", "gpt-4o", None): "201"}
    side = costflux_costs(answers_for(report, ours), False)
    assert reconcile(report, side, tolerance_pct=Decimal(tolerance)).exit_code == exit_code


def test_one_sided_rows() -> None:
    report = csv_report({("2025-06-01", "gpt-4o", None): Decimal("10"),
                         ("2025-06-01", "claude-x", None): Decimal("2"),
                         ("2025-06-02", "gpt-4o", None): Decimal("0")})
    ours: dict[Key, str] = {
            ("2025-06-01", "gpt-4o", None): "10", ("2025-06-02", "gpt-4o", None): "0",
            ("2025-06-01", "llama-local", None): "0",  # no token cost: left out
            ("2025-06-02", "__idle__", None): "3",     # idle GPU time: never a provider's
            ("2025-06-02", "gpt-4o-mini", None): "0.25"}
    side = costflux_costs(answers_for(report, ours), False)
    side.costs[day("2025-06-05"), "gpt-4o", None] = Decimal(9)  # outside the report's days
    result = reconcile(report, side)
    rows = {(r.period.label, r.model): r for r in result.rows}
    assert set(rows) == {("2025-06-01", "gpt-4o"), ("2025-06-01", "claude-x"),
                         ("2025-06-02", "gpt-4o"), ("2025-06-02", "gpt-4o-mini")}
    missing, new = rows["2025-06-01", "claude-x"], rows["2025-06-02", "gpt-4o-mini"]
    assert (missing.in_costflux, missing.in_provider, missing.percent) == (
        False, True, Decimal(-100))
    assert missing.status(result.tolerance_pct) == "missing"
    assert (new.in_costflux, new.in_provider, new.percent) == (True, False, None)
    assert new.status(result.tolerance_pct) == "new"
    assert rows["2025-06-02", "gpt-4o"].percent == 0  # 0 against 0
    assert result.exit_code == 1
    # --min-difference lets small one-sided rows pass; the $2 missing row still fails.
    assert [r.model for r in reconcile(report, side, min_difference=Decimal("0.25"))
            .mismatches] == ["claude-x"]


def test_maps_and_model_patterns() -> None:
    report = report_of("openai_costs_grouped.jsonl")
    ours: dict[Key, str] = {
            ("2024-11-01", "gpt-4o", "search"): "3.75", ("2024-11-01", "gpt-4o-mini", "ads"):
            "0.16125", ("2024-11-02", "gpt-4o", "search"): "2.25",
            ("2024-11-02", "llama-local", "search"): "5"}
    side = costflux_costs(answers_for(report, ours), True)
    result = reconcile(report, side, project_map={"proj_abc": "search", "proj_def": "ads"},
                       model_map={"gpt-4o-2024-08-06": "gpt-4o",
                                  "gpt-4o-mini-2024-07-18": "gpt-4o-mini"},
                       models=["gpt-*"])
    assert result.exit_code == 0 and len(result.rows) == 3  # Image models, llama-local: out
    unfiltered = reconcile(report, side, project_map={"proj_abc": "search"})
    assert {r.model for r in unfiltered.mismatches} == {
        "gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18",
        "Image models", "llama-local"}


def test_a_report_without_models_is_compared_with_all_of_costflux_per_day() -> None:
    report = report_of("openai_costs_reference.json")
    ours: dict[Key, str] = {
            ("2024-11-01", "gpt-4o", None): "0.05", ("2024-11-01", "o3", None): "0.01",
            ("2024-11-01", "llama-local", None): "7"}
    side = costflux_costs(answers_for(report, ours), False)
    assert reconcile(report, side).exit_code == 1
    result = reconcile(report, side, models=["gpt-*", "o*"])
    [row] = result.rows
    assert (row.model, row.costflux, row.provider, result.exit_code) == (
        "*", Decimal("0.06"), Decimal("0.06"), 0)
    assert any("compared with all of costflux's models matching --model" in n
               for n in result.notes)


amounts = st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False,
                      allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(amounts, amounts), min_size=1, max_size=8),
       tolerance=st.decimals(min_value=0, max_value=50, places=3))
def test_rows_equal_an_independent_decimal_computation(
        pairs: Sequence[tuple[Decimal, Decimal]], tolerance: Decimal) -> None:
    keys = [(DAYS[i % 4], MODELS[i % 3] + str(i), None) for i in range(len(pairs))]
    report = csv_report({k: theirs for k, (_, theirs) in zip(keys, pairs, strict=True)})
    ours: dict[Key, str] = {k: f"{mine:f}" for k, (mine, _) in zip(keys, pairs, strict=True)}
    result = reconcile(report, costflux_costs(answers_for(report, ours), False),
                       tolerance_pct=tolerance)
    rows = {(r.period.label, r.model): r for r in result.rows}
    over = False
    for (d, m, _), (mine, theirs) in zip(keys, pairs, strict=True):
        row = rows[d, m]  # every provider row is a row
        assert (row.costflux, row.provider, row.difference) == (mine, theirs, mine - theirs)
        if theirs:
            assert row.percent == (mine - theirs) * 100 / theirs
            over |= abs(mine - theirs) / theirs * 100 > tolerance
        else:
            assert row.percent == (None if mine else 0)
            over |= mine != 0
    assert result.exit_code == int(over)
    assert result.total().provider == sum((t for _, t in pairs), Decimal(0))


# ------------------------------------------------------------------------------ rendering


def planted_result() -> tuple[ProviderReport, CostfluxCosts]:
    report = csv_report({("2025-06-01", "gpt-4o", None): Decimal("103"),
                         ("2025-06-01", "o3", None): Decimal("2.5"),
                         ("2025-06-02", "gpt-4o", None): Decimal("1234.5")})
    ours: dict[Key, str] = {
            ("2025-06-01", "gpt-4o", None): "100", ("2025-06-01", "o3", None): "2.5",
            ("2025-06-02", "gpt-4o", None): "1234.5", ("2025-06-02", "o3", None): "0.000001"}
    return report, costflux_costs(answers_for(report, ours), False)


def test_table() -> None:
    text = render(reconcile(*planted_result()), "table")
    assert text.splitlines() == [
        "Reconciliation of report.csv (csv) with costflux tokenCostExact; tolerance 0.5 %",
        "Day         Model        costflux       Provider  Difference      %  Status",
        "2025-06-01  gpt-4o    $100.000000    $103.000000  -$3.000000  -2.91  over",
        "2025-06-01  o3          $2.500000      $2.500000   $0.000000   0.00  ok",
        "2025-06-02  gpt-4o  $1,234.500000  $1,234.500000   $0.000000   0.00  ok",
        "2025-06-02  o3          $0.000001      $0.000000   $0.000001    inf  new",
        "Total               $1,337.000001  $1,340.000000  -$2.999999  -0.22",
        "2 of 4 rows over the tolerance",
    ]


def test_csv_and_json_keep_every_digit() -> None:
    result = reconcile(*planted_result())
    assert render(result, "csv").splitlines() == [
        "day,model,costflux,provider,difference,percent,status",
        "2025-06-01,gpt-4o,100,103,-3,-2.912621359223300970873786408,over",
        "2025-06-01,o3,2.5,2.5,0.0,0,ok",
        "2025-06-02,gpt-4o,1234.5,1234.5,0.0,0,ok",
        "2025-06-02,o3,0.000001,0,0.000001,inf,new",
    ]
    document = json.loads(render(result, "json"))
    assert document["mismatches"] == 2 and document["costfluxField"] == "tokenCostExact"
    assert document["rows"][3] == {
        "day": "2025-06-02", "start": "2025-06-02T00:00:00Z", "end": "2025-06-03T00:00:00Z",
        "model": "o3", "costflux": "0.000001", "provider": "0", "difference": "0.000001",
        "percent": "inf", "status": "new", "inCostflux": True, "inProvider": False}
    assert document["total"]["difference"] == "-2.999999"
