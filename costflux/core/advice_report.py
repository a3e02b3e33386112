"""Savings advice as the API answers it, the seed's ROI table, and its rendering.

The ROI table (项目 | 优化前 | 优化后 | 节省) has one row per kind of change: before is what that
change acts on (after the earlier changes), after is what it leaves. The total row starts
from the whole current monthly cost, so its saving is the changes' savings added up, and
the caches' achieved savings (prompt cache, semantic cache) are shown apart, one row each
(they are already in today's cost).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from costflux.core.advice import KINDS, Advice, AdviceResult, Estimate
from costflux.core.allocation import iso_window
from costflux.core.report import dollars, percent, table_lines

__all__ = ["ADVICE_FORMATS", "TITLES", "advice_answer", "render_advice"]

ADVICE_FORMATS = ("table", "markdown", "json")
TITLES = {
    "rightsize": "Scale down idle GPUs",
    "batching": "Batch small requests",
    "reserved": "Reserve the GPU baseline",
    "spot": "Spot GPUs for the burst",
    "routing": "Route to a smaller model",
    "prompt_cache": "Prompt cache (achieved)",
    "semantic_cache": "Semantic cache (achieved)",
}
#: The achieved savings, in the order their rows follow the total.
ACHIEVED_KINDS = ("prompt_cache", "semantic_cache")
_PICO = Decimal(1).scaleb(-12)


def advice_answer(result: AdviceResult) -> dict[str, Any]:
    """The ``/api/advice`` body's ``data``: figures as floats and as exact decimal strings."""
    if result.measured is None:
        return {"window": None, "currentMonthlyCost": 0.0, "advice": [], "cacheAchieved": [],
                "roi": []}
    return {
        "window": iso_window(result.measured),
        "monthlyFactor": _exact(result.monthly_factor),
        "currentMonthlyCost": float(result.current_monthly),
        "currentMonthlyCostExact": _exact(result.current_monthly),
        "advice": [_advice(a) for a in result.advice],
        "cacheAchieved": [_advice(a) for a in result.cache_achieved],
        "roi": _roi(result),
    }


def _advice(advice: Advice) -> dict[str, Any]:
    return {
        "kind": advice.kind,
        "title": TITLES[advice.kind],
        "target": advice.target,
        **_figures(advice.estimate),
        "evidence": dict(advice.evidence),
        "assumptions": list(advice.assumptions),
    }


def _figures(estimate: Estimate) -> dict[str, Any]:
    return {
        "monthlyBefore": float(estimate.before),
        "monthlyAfter": float(estimate.after),
        "monthlySaving": float(estimate.saving),
        "savingPct": _share_pct(estimate),
        "monthlyBeforeExact": _exact(estimate.before),
        "monthlyAfterExact": _exact(estimate.after),
        "monthlySavingExact": _exact(estimate.saving),
    }


def _roi(result: AdviceResult) -> list[dict[str, Any]]:
    rows = []
    for kind in KINDS:
        of_kind = [a.estimate for a in result.advice if a.kind == kind]
        if of_kind:
            rows.append({"item": TITLES[kind], **_figures(_sum(of_kind))})
    saving = sum((a.estimate.saving for a in result.advice), Fraction(0))
    total = Estimate(result.current_monthly, result.current_monthly - saving)
    rows.append({"item": "Total", **_figures(total)})
    for kind in ACHIEVED_KINDS:
        achieved = [a.estimate for a in result.cache_achieved if a.kind == kind]
        if achieved:
            rows.append({"item": TITLES[kind], **_figures(_sum(achieved))})
    return rows


def _sum(estimates: Sequence[Estimate]) -> Estimate:
    return Estimate(sum((e.before for e in estimates), Fraction(0)),
                    sum((e.after for e in estimates), Fraction(0)))


def _share_pct(estimate: Estimate) -> float:
    if not estimate.before:
        return 0.0
    share = estimate.saving / estimate.before
    return float(percent(Decimal(share.numerator) / Decimal(share.denominator)))


def _exact(value: Fraction) -> str:
    """Dollars to the pico-dollar, half to even."""
    scaled = value * 10**12
    whole, remainder = divmod(scaled.numerator, scaled.denominator)
    if 2 * remainder > scaled.denominator or (
            2 * remainder == scaled.denominator and whole % 2):
        whole += 1
    return f"{(Decimal(whole) * _PICO).quantize(_PICO):f}"


def render_advice(data: Mapping[str, Any], form: str) -> str:
    """The advice and its ROI table as text (table, markdown) or the API's JSON."""
    if form == "json":
        return json.dumps(data, indent=2) + "\n"
    if not data.get("window"):
        return "No cost data in the window: nothing to advise on.\n"
    window = data["window"]
    header = ("Item", "Before", "After", "Saving")
    roi = [(r["item"], _money(r["monthlyBeforeExact"]), _money(r["monthlyAfterExact"]),
            f"{r['savingPct']:.1f}%") for r in data["roi"]]
    lines = [f"Savings advice, a month at the rate of {window['start']} .. {window['end']}", "",
             *table_lines(header, roi, markdown=form == "markdown")]
    for advice in [*data["advice"], *data["cacheAchieved"]]:
        bullet = "- " if form == "markdown" else "  "
        lines += ["", f"{advice['title']}: {advice['target']} - saves "
                      f"{_money(advice['monthlySavingExact'])}/month ({advice['savingPct']:.1f}%)"]
        lines += [f"{bullet}assumes {text}" for text in advice["assumptions"]]
        if "byTeam" in advice["evidence"]:
            lines.append(f"{bullet}{_saved_in_window(advice['evidence'])}")
    return "\n".join(lines) + "\n"


def _saved_in_window(evidence: Mapping[str, Any]) -> str:
    """What a cache saved in the measured window, in all and by team."""
    teams = ", ".join(f"{team} {_money(saved['savedInWindowExact'])}"
                      for team, saved in evidence["byTeam"].items())
    return (f"saved {_money(evidence['savedInWindowExact'])} in the window "
            f"({evidence['hits']} hits): {teams}")


def _money(exact: str) -> str:
    return f"${dollars(Decimal(exact))}"
