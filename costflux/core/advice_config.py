"""The advice file (``COSTFLUX_ADVICE_FILE``): the estimates' assumptions, each optional.

    target_utilization_pct: 70      # rightsize: keep the GPUs busy time needs at this level
    min_gpus: 1                     # ... and never fewer per model and GPU type
    batching_saving_pct: 30         # batching: GPU-hours saved (the seed's table: 20-40 %)
    routing_share_pct: 50           # routing: share of short-output traffic moved
    routes: {gpt-4: gpt-4o-mini}    # routing targets; else the closest cheaper model in use
"""

from __future__ import annotations

from dataclasses import fields, replace
from fractions import Fraction
from typing import Any

import yaml

from costflux.core.advice import Assumptions

__all__ = ["AdviceConfigError", "parse_assumptions_text"]

_PERCENTS = ("target_utilization_pct", "batching_max_utilization_pct", "batching_saving_pct",
             "routing_share_pct")


class AdviceConfigError(ValueError):
    """The advice file is invalid; the message names the field and the fix."""


def parse_assumptions_text(text: str, source: str = "advice.yaml") -> Assumptions:
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise AdviceConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(document, dict):
        raise AdviceConfigError(f"{source}: expected a mapping of assumption to value")
    known = {f.name: f for f in fields(Assumptions)}
    values: dict[str, Any] = {}
    for name, value in document.items():
        where = f"{source}: {name}"
        if name not in known:
            raise AdviceConfigError(f"{where}: unknown assumption; use one of "
                                    f"{', '.join(known)}")
        if name == "routes":
            values[name] = _routes(value, where)
        elif known[name].type in ("int", int):
            values[name] = _whole(value, where)
        else:
            values[name] = _number(value, where, name in _PERCENTS)
    if values.get("month_days", 30) < 1:
        raise AdviceConfigError(f"{source}: month_days: must be at least 1")
    return replace(Assumptions(), **values)


def _whole(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AdviceConfigError(f"{where}: expected a whole number >= 0, got {value!r}")
    return value


def _number(value: Any, where: str, percent: bool) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise AdviceConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = Fraction(str(value))
    except ValueError:
        raise AdviceConfigError(f"{where}: expected a number, got {value!r}") from None
    if number < 0 or (percent and not 0 < number <= 100):
        bounds = "between 0 (excluded) and 100" if percent else ">= 0"
        raise AdviceConfigError(f"{where}: expected a number {bounds}, got {value!r}")
    return number


def _routes(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise AdviceConfigError(f"{where}: expected a mapping of model to cheaper model, "
                                "e.g. {gpt-4: gpt-4o-mini}")
    return dict(value)
