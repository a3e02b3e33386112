"""Metrics label bounds, and price reloads that keep the last good prices."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from costflux.core.pricing import PricingError
from costflux.core.rows import UsageSums
from costflux.pricing_source import PricingSource
from costflux.streams.metrics import CostMetrics, LabelLimiter

GOOD = "model_costs:\n  m:\n    input_tokens: 0.001\n    output_tokens: 0.002\n"
BETTER = "model_costs:\n  m:\n    input_tokens: 0.003\n    output_tokens: 0.004\n"
BROKEN = "model_costs:\n  m:\n    input_tokens: -1\n    output_tokens: 0.004\n"


def test_label_values_beyond_the_cap_are_reported_as_other_unless_allowed() -> None:
    limiter = LabelLimiter(cap=2, allowed=["vip"])
    seen = [limiter(v) for v in ["a", "b", "c", "vip", "a", "d"]]
    assert seen == ["a", "b", "other", "vip", "a", "other"]
    with pytest.raises(ValueError):
        LabelLimiter(cap=0)


def test_cost_metrics_count_rows_in_dollars_with_bounded_labels() -> None:
    registry = CollectorRegistry()
    metrics = CostMetrics(registry, label_cap=1)
    metrics.count_row(("gpt-4", "search", "p", "app", "ml", "d", "c"),
                      UsageSums(1_500_000_000_000, 10, 20, 3, 2))
    metrics.count_row(("llama", "ads", "p", "app", "ml", "d", "c"),
                      UsageSums(250_000_000_000, 1, 2, 0, 1))
    labels = {"model": "gpt-4", "team": "search", "app": "app", "namespace": "ml"}
    assert registry.get_sample_value("llm_request_cost_dollars_total", labels) == 1.5
    assert registry.get_sample_value("llm_requests_total", labels) == 2
    assert registry.get_sample_value(
        "llm_tokens_total", {**labels, "direction": "cached_input"}
    ) == 3
    overflow = {"model": "other", "team": "other", "app": "app", "namespace": "ml"}
    assert registry.get_sample_value("llm_request_cost_dollars_total", overflow) == 0.25


def _write(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, (stamp, stamp))


def test_reload_swaps_valid_prices_and_keeps_the_last_good_ones_on_error(tmp_path: Path) -> None:
    path = tmp_path / "pricing.yaml"
    _write(path, GOOD, 1_000)
    source = PricingSource(path)
    assert source.current().model_price("m", 0).input == 1_000_000  # type: ignore[union-attr]
    _write(path, BROKEN, 2_000)
    assert source.reload_if_changed() is False
    assert source.current().model_price("m", 0).input == 1_000_000  # type: ignore[union-attr]
    assert source.last_error is not None and "input_tokens" in source.last_error
    _write(path, BETTER, 3_000)
    assert source.reload_if_changed() is True
    assert source.current().model_price("m", 0).input == 3_000_000  # type: ignore[union-attr]
    assert source.last_error is None


def test_bundled_prices_are_the_seed_and_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    assert PricingSource(None).current().models == {"llama-2-70b", "llama-2-7b", "gpt-4"}
    with pytest.raises(PricingError, match="cannot read the price file"):
        PricingSource(tmp_path / "absent.yaml")


def test_alert_metrics_show_budgets_and_spike_ratios_and_drop_gone_ones() -> None:
    from fractions import Fraction

    from costflux.agents.alert_metrics import AlertMetrics
    from costflux.core.budgets import budget_status, parse_budgets_text

    registry = CollectorRegistry()
    metrics = AlertMetrics(registry, label_cap=2, allowed={})
    (budget,) = parse_budgets_text(
        "budgets: [{name: b, scope: {team: x}, period: daily, amount: 100}]")
    metrics.set_budgets([budget_status(budget, 150 * 10**12, 1_800_000_000_000)])
    value = registry.get_sample_value
    assert value("llm_budget_spend_dollars", {"budget": "b"}) == 150
    assert value("llm_budget_limit_dollars", {"budget": "b"}) == 100
    assert value("llm_budget_status", {"budget": "b"}) == 2  # spent 1.5x: CRITICAL
    spike = {"namespace": "prod", "team": "x", "model": "m"}
    metrics.set_spike_ratios([(spike, Fraction(5, 2))])
    assert value("llm_cost_spike_ratio", spike) == 2.5
    metrics.set_spike_ratios([])
    metrics.set_budgets([])
    assert value("llm_cost_spike_ratio", spike) is None
    assert value("llm_budget_status", {"budget": "b"}) is None
