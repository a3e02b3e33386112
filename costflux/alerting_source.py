"""The rules, budgets and advice files, read at the process edge."""

from __future__ import annotations

from pathlib import Path

from costflux.core.advice import Assumptions
from costflux.core.advice_config import parse_assumptions_text
from costflux.core.alert_rules import DEFAULT_RULES, parse_rules_text
from costflux.core.alerts import Rule
from costflux.core.allocation import AllocationOptions
from costflux.core.budgets import Budget, parse_budgets_text
from costflux.core.detect import Detection, DetectOptions
from costflux.file_watch import ReloadedFiles
from costflux.settings import ConfigError, Settings

__all__ = ["DetectionSource", "advice_assumptions_from", "detection_from"]


def detection_from(settings: Settings) -> Detection:
    """Rules (the seeds' defaults unless a file is given), budgets and the evaluation step."""
    finest = min(settings.window_sizes)
    if settings.eval_interval_s % finest:
        raise ConfigError(
            f"COSTFLUX_EVAL_INTERVAL_S: {settings.eval_interval_s}s is not a multiple of the "
            f"finest window ({finest}s); use e.g. {finest}"
        )
    rules: tuple[Rule, ...] = DEFAULT_RULES
    budgets: list[Budget] = []
    # A RulesError or BudgetError is a ConfigError: its message names the file and the field.
    if settings.rules_file is not None:
        rules = parse_rules_text(_read(settings.rules_file, "COSTFLUX_RULES_FILE"),
                                 str(settings.rules_file))
    if settings.budgets_file is not None:
        budgets = parse_budgets_text(_read(settings.budgets_file, "COSTFLUX_BUDGETS_FILE"),
                                     str(settings.budgets_file))
    options = DetectOptions(
        window_sizes_s=tuple(settings.window_sizes),
        step_ms=settings.eval_interval_s * 1000,
        allocation=AllocationOptions(settings.gpu_share_idle, settings.gpu_allocation_weight),
    )
    return Detection(rules, budgets, options)


class DetectionSource(ReloadedFiles[Detection]):
    """The current rules and budgets, re-read when their files change; an invalid change
    keeps the last good ones together (logged with the file and the field), like prices."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("rules and budgets", (settings.rules_file, settings.budgets_file),
                         lambda: detection_from(settings), (ConfigError,))


def advice_assumptions_from(settings: Settings) -> Assumptions:
    """The savings advice's assumptions: the defaults, or the advice file's."""
    if settings.advice_file is None:
        return Assumptions()
    return parse_assumptions_text(_read(settings.advice_file, "COSTFLUX_ADVICE_FILE"),
                                  str(settings.advice_file))


def _read(path: Path, setting: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{setting}={path}: cannot read it ({exc.strerror})") from None



