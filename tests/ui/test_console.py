"""The cost console in a real headless Chromium against a worker that served the bundled trace:
every page draws with no console error, and the numbers it shows (read from the DOM) are the
API's for the same window, formatted by an independent implementation (tests/ui/expected.py).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest

from tests.ui.conftest import TRACE_WINDOW, ConsolePage, ConsoleWorker
from tests.ui.expected import count, exact_sum, money, ms, percent, projected

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
COST_VIEW = f"cost?by=team&window={TRACE_WINDOW}&step=5m"
GPU_VIEW = f"gpu?by=node&window={TRACE_WINDOW}&step=5m"

Console = Callable[..., ConsolePage]


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).inner_text()).strip()


def _pico(value: float) -> Decimal:
    """An API float as the page takes it: its exact value rounded to the pico-dollar."""
    return Decimal(format(value, ".12f"))


def test_every_page_draws_with_its_charts_and_no_console_error(console: Console) -> None:
    tab = console()
    views = {"overview": "overview", "cost": COST_VIEW, "budgets": "budgets",
             "gpu": GPU_VIEW, "savings": "savings?window=7d"}
    charts = {"overview": 0, "cost": 1, "budgets": 3, "gpu": 2, "savings": 0}
    for name, view in views.items():
        page = tab.open(view)
        assert page.locator("nav a[aria-current='page']").get_attribute("data-page") == name
        # uPlot draws on a canvas: one per chart, each with a size.
        canvases = page.locator("main canvas")
        assert canvases.count() == charts[name], name
        for i in range(canvases.count()):
            box = canvases.nth(i).bounding_box()
            assert box is not None and box["width"] > 300 and box["height"] > 100, name
        tab.screenshot(name)
    tab.assert_clean()


def test_overview_shows_the_apis_spend_projection_budgets_top_spenders_and_alerts(
        console: Console, console_worker: ConsoleWorker) -> None:
    page = console().open("overview")

    today = list(console_worker.rows("/model/allocation", window="today",
                                     aggregate="namespace").values())
    start, end = ms(today[0]["window"]["start"]), ms(today[0]["window"]["end"])
    total = exact_sum(today)
    assert _text(page, "[data-metric='spend-today']") == money(total)
    assert _text(page, "[data-metric='projected-today']") == money(
        projected(total, start, end, start + DAY_MS))

    month = list(console_worker.rows("/model/allocation", window="month",
                                     aggregate="namespace").values())
    start, end = ms(month[0]["window"]["start"]), ms(month[0]["window"]["end"])
    first = datetime.fromtimestamp(start / 1000, UTC)
    month_end = int(first.replace(month=first.month % 12 + 1,
                                  year=first.year + first.month // 12).timestamp() * 1000)
    assert _text(page, "[data-metric='spend-month']") == money(exact_sum(month))
    assert _text(page, "[data-metric='projected-month']") == money(
        projected(exact_sum(month), start, end, month_end))

    budgets = console_worker.data("/api/budgets")
    assert len(budgets) == 3
    for budget in budgets:
        row = page.locator(f"tr[data-name='{budget['name']}']")
        assert _text(row, "[data-key='spend']") == money(budget["spend"])
        assert _text(row, "[data-key='limit']") == money(budget["limit"])
        assert _text(row, "[data-key='projected']") == money(budget["projected"])
        assert _text(row, "[data-key='used']") == percent(Decimal(budget["spend"]),
                                                          Decimal(budget["limit"]))
        assert _text(row, "[data-key='status']") == budget["status"]

    for panel, aggregate in (("teams", "label:team"), ("models", "model")):
        rows = console_worker.rows("/model/allocation", window="24h", aggregate=aggregate)
        totals = {name: Decimal(row["totalCostExact"]) for name, row in rows.items()}
        ranked = sorted(totals, key=lambda name: (-totals[name], name))[:6]
        shown = page.locator(f"[data-top='{panel}'] tbody tr")
        assert [shown.nth(i).get_attribute("data-name") for i in range(shown.count())] == ranked
        for name in ranked:
            row = page.locator(f"[data-top='{panel}'] tr[data-name='{name}']")
            # The sum of the hourly steps drawn as the trend is the whole window's total.
            assert _text(row, "[data-key='total']") == money(totals[name]), name
            assert _text(row, "[data-key='share']") == percent(totals[name],
                                                               sum(totals.values(), Decimal(0)))

    alerts = console_worker.data("/api/alerts")
    assert alerts, "the demo's budgets fire alerts on the trace"
    assert page.locator("[data-alerts]").get_attribute("data-alerts") == str(len(alerts))
    assert _text(page, "[data-alerts]").count("BudgetThreshold") == sum(
        a["rule"] == "BudgetThreshold" for a in alerts)


def _cost_cells(row: dict[str, Any]) -> dict[str, str]:
    tokens = row["inputTokens"] + row["outputTokens"]
    return {
        "requests": count(row["requests"]), "tokens": count(tokens),
        "tokenCost": money(row["tokenCost"]), "gpuCost": money(row["gpuCost"]),
        "idleCost": money(row["idleCost"]), "total": money(row["totalCostExact"]),
        "perRequest": money(row["costPerRequest"]) if row["requests"] else "–",
        "per1k": money(row["costPerToken"] * 1000) if tokens else "–",
    }


def _assert_table(page: Any, rows: dict[str, dict[str, Any]]) -> None:
    shown = page.locator("main tbody tr")
    assert sorted(shown.nth(i).get_attribute("data-name") for i in range(shown.count())) \
        == sorted(rows)
    for name, row in rows.items():
        cells = page.locator(f"main tbody tr[data-name='{name}']")
        for key, want in _cost_cells(row).items():
            assert _text(cells, f"[data-key='{key}']") == want, (name, key)


def test_cost_page_numbers_are_the_apis_and_picking_a_team_filters_the_table_and_its_csv(
        console: Console, console_worker: ConsoleWorker) -> None:
    tab = console()
    page = tab.open(COST_VIEW)
    rows = console_worker.rows("/model/allocation", window=TRACE_WINDOW,
                               aggregate="label:team,model")
    assert len(rows) == 13  # 4 teams x 3 models, and the idle GPU row
    _assert_table(page, rows)
    values = list(rows.values())
    assert _text(page, "[data-metric='total']") == money(exact_sum(values))
    for key, field in (("token", "tokenCost"), ("gpu", "gpuCost"), ("idle", "idleCost")):
        assert _text(page, f"[data-metric='{key}']") == money(
            sum((_pico(r[field]) for r in values), Decimal(0))), key
    footer = page.locator("main tfoot tr")
    assert _text(footer, "[data-key='total']") == money(exact_sum(values))
    assert _text(footer, "[data-key='requests']") == count(sum(r["requests"] for r in values))

    # The legend: each team's total over the chart's steps, as the stepped API answers.
    sets = console_worker.data("/model/allocation", window=TRACE_WINDOW, step="5m",
                               aggregate="label:team")
    assert len(sets) == 18
    team_totals: dict[str, Decimal] = {}
    for step in sets:
        for name, row in step.items():
            team_totals[name] = team_totals.get(name, Decimal(0)) + Decimal(row["totalCostExact"])
    for name, total in team_totals.items():
        assert money(total) in _text(page, f".legend button[data-series='{name}']"), name

    page.locator(".legend button[data-series='search']").click()
    chosen = {name: row for name, row in rows.items() if name.startswith("search/")}
    assert len(chosen) == 3
    page.locator("main tbody tr").first.wait_for()
    assert "Showing search only" in _text(page, ".filter-note")
    assert page.locator(".legend button[data-series='search']").get_attribute(
        "aria-pressed") == "true"
    _assert_table(page, chosen)
    assert "filter=search" in page.url

    with page.expect_download() as started:
        page.locator("[data-download='csv']").click()
    path = started.value.path()
    with open(path, newline="", encoding="utf-8") as handle:
        downloaded = list(csv.DictReader(handle))
    assert sorted(r["name"] for r in downloaded) == sorted(chosen)
    for line in downloaded:
        want = chosen[line["name"]]
        scalar = {k: v for k, v in want.items() if not isinstance(v, dict)}
        assert set(line) == set(scalar)
        for field, value in scalar.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                assert line[field] == str(value), field
            else:
                assert type(value)(line[field]) == value, field  # exactly the API's number

    # A second click on the chosen series shows every row again.
    page.locator(".legend button[data-series='search']").click()
    page.locator(".filter-note button").wait_for(state="detached")
    _assert_table(page, rows)
    tab.assert_clean()


def test_clicking_a_bar_filters_by_the_series_under_the_pointer(console: Console) -> None:
    tab = console()
    page = tab.open(COST_VIEW)
    # The largest team is the bottom of every stack: click just above a bar's foot at 18:45.
    over = page.locator("[data-chart='cost'] .u-over")
    box = over.bounding_box()
    assert box is not None
    bottom = page.locator(".legend button").first.get_attribute("data-series")
    over.click(position={"x": box["width"] / 2 + 4, "y": box["height"] - 3})
    assert f"Showing {bottom} only" in _text(page, ".filter-note")
    names = page.locator("main tbody tr")
    assert names.count() == 3
    for i in range(3):
        assert str(names.nth(i).get_attribute("data-name")).startswith(f"{bottom}/")
    tab.assert_clean()


def test_budgets_page_shows_each_budget_its_thresholds_and_a_burn_up_ending_at_its_spend(
        console: Console, console_worker: ConsoleWorker) -> None:
    tab = console()
    page = tab.open("budgets")
    for budget in console_worker.data("/api/budgets"):
        card = page.locator(f"section[data-budget='{budget['name']}']")
        assert _text(card, "[data-key='spend']") == money(budget["spend"])
        assert _text(card, "[data-key='limit']") == money(budget["limit"])
        assert _text(card, "[data-key='projected']") == money(budget["projected"])
        assert _text(card, "[data-key='used']") == percent(Decimal(budget["spend"]),
                                                           Decimal(budget["limit"]))
        thresholds = _text(card, "[data-key='thresholds']")
        assert budget["thresholds"], budget
        for pct in budget["thresholds"]:
            amount = Decimal(budget["limit"]) * pct / 100
            reached = " reached" if pct in budget["thresholdsReached"] else ""
            assert f"{pct} % ({money(amount)}){reached}" in thresholds
        # The curve's last point is the budget's own spend, to a pico-dollar per hourly step.
        final = Decimal(str(card.get_attribute("data-burnup-final")))
        steps = (ms(budget["evaluatedAt"]) - ms(budget["periodStart"])) // 3_600_000 + 1
        assert abs(final - Decimal(budget["spend"])) <= steps * Decimal("1e-12"), budget["name"]
        assert card.locator("canvas").count() == 1
    tab.assert_clean()


def _half_up(value: float, places: str) -> str:
    """JavaScript's toFixed: the float's exact value, ties away from zero."""
    return str(Decimal(value).quantize(Decimal(places), ROUND_HALF_UP))


def test_gpu_and_savings_pages_show_the_apis_numbers(
        console: Console, console_worker: ConsoleWorker) -> None:
    tab = console()
    page = tab.open(GPU_VIEW)
    nodes = console_worker.rows("/model/gpu", window=TRACE_WINDOW, aggregate="node")
    assert sorted(nodes) == ["demo-node-1", "demo-node-2"]
    for name, row in nodes.items():
        cells = page.locator(f"main tbody tr[data-name='{name}']")
        assert _text(cells, "[data-key='gpuHours']") == _half_up(row["gpuHours"], "0.01")
        assert _text(cells, "[data-key='utilization']") == \
            _half_up(100 * row["utilization"], "0.1") + " %"
        assert _text(cells, "[data-key='totalCost']") == money(row["totalCost"])
        assert _text(cells, "[data-key='idleCost']") == money(row["idleCost"])
        assert _text(cells, "[data-key='spot']") == money(row["costByTier"]["spot"])
    assert _text(page, "[data-metric='gpu-total']") == money(
        sum((_pico(r["totalCost"]) for r in nodes.values()), Decimal(0)))
    # The stepped GPU answer (one set per 5 minutes) adds up to the window's GPU time.
    sets = console_worker.data("/model/gpu", window=TRACE_WINDOW, step="5m", aggregate="node")
    assert len(sets) == 18
    assert sum(s["demo-node-1"]["gpuHours"] for s in sets if s) == pytest.approx(
        nodes["demo-node-1"]["gpuHours"])

    page = tab.open("savings?window=7d")
    advice = console_worker.data("/api/advice", window="7d")
    assert _text(page, "[data-metric='monthly']") == money(advice["currentMonthlyCostExact"])
    total = next(row for row in advice["roi"] if row["item"] == "Total")
    assert _text(page, "[data-metric='saving']") == money(total["monthlySavingExact"])
    shown = page.locator("main tbody tr")
    assert shown.count() == len(advice["advice"]) + len(advice["roi"])
    for i, row in enumerate(advice["advice"]):
        cells = page.locator(f"main tbody tr[data-name='{i}']")
        assert _text(cells, "[data-key='target']") == row["target"]
        assert _text(cells, "[data-key='saving']") == money(row["monthlySavingExact"])
        assert _text(cells, "[data-key='pct']") == f"{row['savingPct']:.1f} %"
    tab.assert_clean()


def test_times_are_utc_with_the_browsers_local_time_on_hover(console: Console) -> None:
    tab = console(timezone="America/New_York")
    page = tab.open(COST_VIEW)
    first = page.locator("main time").first
    assert first.get_attribute("datetime") == "2023-11-16T18:00:00.000Z"
    assert _text(page, "main time >> nth=0") == "2023-11-16 18:00 UTC"
    assert first.get_attribute("title") == "2023-11-16 13:00 local time (UTC−05:00)"
    # Hovering a bar reads its step out in UTC and local time, and each team's cost.
    over = page.locator("[data-chart='cost'] .u-over")
    box = over.bounding_box()
    assert box is not None
    over.hover(position={"x": box["width"] / 2 + 4, "y": box["height"] / 2})
    readout = _text(page, "[data-chart='cost'] .readout")
    assert readout.startswith("2023-11-16 18:45 UTC · 2023-11-16 13:45 local time"), readout
    assert "search $" in readout
    tab.assert_clean()


#: (amount, shown): the edges of the money format.
MONEY_CASES = [
    ("0", "$0.00"), ("0.0004", "$0.000400"), ("0.000412345", "$0.000412"),
    ("0.04027777", "$0.0403"), ("0.5", "$0.500"), ("0.0999951", "$0.100"),
    ("0.99951", "$1.00"), ("1", "$1.00"), ("1234.565", "$1,234.56"), ("1234.575", "$1,234.58"),
    ("228286.415756065574", "$228,286.42"), ("0.000000000001", "$0.000000000001"),
    ("-2.5", "-$2.50"), (0.0474262825, "$0.0474"), (76.54602, "$76.55"),
]


def test_money_has_the_precision_its_size_needs(console: Console) -> None:
    """The page's formatter (static/format.js) and the tests' own agree, on the edges."""
    assert [money(amount) for amount, _ in MONEY_CASES] == [shown for _, shown in MONEY_CASES]
    tab = console()
    page = tab.open("savings?window=7d")
    module = page.evaluate("() => new URL('static/format.js', document.baseURI).href")
    formatted = page.evaluate("async ([url, amounts]) => {"
                              " const { money } = await import(url);"
                              " return amounts.map((amount) => money(amount)); }",
                              [module, [amount for amount, _ in MONEY_CASES]])
    assert formatted == [shown for _, shown in MONEY_CASES]
    tab.assert_clean()
