"""Rules and budgets re-read by a running worker: valid changes apply, invalid ones are named
and the last good set is kept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from costflux.alerting_source import DetectionSource
from costflux.settings import ConfigError, Settings

RULES = "rules:\n  - {name: DailyOver, signal: daily_cost, op: \">\", threshold: 100}\n"
BUDGETS = "budgets: [{name: b, scope: {team: x}, period: daily, amount: %d}]\n"


def _write(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, (stamp, stamp))


def test_changed_files_are_applied_and_a_broken_one_keeps_the_last_good_set(
    tmp_path: Path,
) -> None:
    rules, budgets = tmp_path / "rules.yaml", tmp_path / "budgets.yaml"
    _write(rules, RULES, 1_000)
    _write(budgets, BUDGETS % 100, 1_000)
    source = DetectionSource(Settings(rules_file=rules, budgets_file=budgets))
    assert [r.name for r in source.current().rules] == ["DailyOver"]
    assert source.reload_if_changed() is False  # nothing changed

    _write(budgets, BUDGETS % 250, 2_000)
    assert source.reload_if_changed() is True
    assert source.current().budgets["b"].amount_pico == 250 * 10**12

    _write(rules, RULES.replace("threshold: 100", "threshold: lots"), 3_000)
    assert source.reload_if_changed() is False
    assert source.last_error is not None and str(rules) in source.last_error
    assert [r.name for r in source.current().rules] == ["DailyOver"]
    assert source.current().budgets["b"].amount_pico == 250 * 10**12
    assert source.reload_if_changed() is False  # the same broken file is not re-reported

    _write(rules, RULES.replace("DailyOver", "DailyOver2"), 4_000)
    assert source.reload_if_changed() is True
    assert source.last_error is None
    assert [r.name for r in source.current().rules] == ["DailyOver2"]


def test_a_broken_file_at_start_up_stops_the_worker_with_the_file_named(tmp_path: Path) -> None:
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text("budgets: [{name: b, period: daily}]\n")
    with pytest.raises(ConfigError, match="budgets.yaml"):
        DetectionSource(Settings(budgets_file=budgets))
