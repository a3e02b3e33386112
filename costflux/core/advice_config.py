"""The advice file (``COSTFLUX_ADVICE_FILE``): the estimates' assumptions, each optional.

    target_utilization_pct: 70      # rightsize: keep the GPUs busy time needs at this level
    min_gpus: 1                     # ... and never fewer per model and GPU type
    batching_saving_pct: 30         # batching: GPU-hours saved (the seed's table: 20-40 %)
    routing_share_pct: 50           # routing: share of short-output traffic moved
    routes: {gpt-4: gpt-4o-mini}    # routing targets; else the closest cheaper model in use
"""

from __future__ import annotations

from dataclasses import fields
from fractions import Fraction
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field, Strict, WithJsonSchema

from costflux.core.advice import Assumptions
from costflux.core.config_files import ConfigModel, Fix, YamlText, check, refuse
from costflux.core.errors import ConfigError

__all__ = ["AdviceConfigError", "AdviceFile", "parse_assumptions_text"]


class AdviceConfigError(ConfigError):
    """The advice file is invalid; the message names the field and the fix."""


def _number(percent: bool) -> BeforeValidator:
    """A number as written (``1/2`` too), exactly: >= 0, or a percentage in (0, 100]."""
    def read(value: Any) -> Fraction:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise refuse(f"expected a number, got {value!r}")
        try:
            number = Fraction(str(value))
        except ValueError:
            raise refuse(f"expected a number, got {value!r}") from None
        if number < 0 or (percent and not 0 < number <= 100):
            bounds = "between 0 (excluded) and 100" if percent else ">= 0"
            raise refuse(f"expected a number {bounds}, got {value!r}")
        return number
    return BeforeValidator(read)


def _at_least_1(days: int) -> int:
    if days < 1:
        raise refuse("must be at least 1")
    return days


Whole = Annotated[int, Strict(), Field(ge=0),
                  Fix(lambda value: f"expected a whole number >= 0, got {value!r}")]
Amount = Annotated[Fraction, _number(percent=False), WithJsonSchema(
    {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}]})]
Percent = Annotated[Fraction, _number(percent=True), WithJsonSchema(
    {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 100}, {"type": "string"}]})]

_DEFAULTS = Assumptions()


class AdviceFile(ConfigModel):
    """The advice file: the savings estimates' assumptions, each optional."""

    shape: ClassVar[str] = "expected a mapping of assumption to value"
    unknown: ClassVar[str] = "unknown assumption; use one of " + ", ".join(
        f.name for f in fields(Assumptions))

    month_days: Annotated[Whole, AfterValidator(_at_least_1)] = _DEFAULTS.month_days
    target_utilization_pct: Percent = _DEFAULTS.target_utilization_pct
    min_gpus: Whole = _DEFAULTS.min_gpus
    batching_max_utilization_pct: Percent = _DEFAULTS.batching_max_utilization_pct
    batching_max_tokens_per_request: Whole = _DEFAULTS.batching_max_tokens_per_request
    batching_min_requests_per_s: Amount = _DEFAULTS.batching_min_requests_per_s
    batching_saving_pct: Percent = _DEFAULTS.batching_saving_pct
    routing_max_output_tokens: Whole = _DEFAULTS.routing_max_output_tokens
    routing_share_pct: Percent = _DEFAULTS.routing_share_pct
    routes: Annotated[dict[Annotated[str, Strict()], Annotated[str, Strict()]], Fix(
        "expected a mapping of model to cheaper model, e.g. {gpt-4: gpt-4o-mini}")] = {}

    def assumptions(self) -> Assumptions:
        return Assumptions(**{f.name: getattr(self, f.name) for f in fields(Assumptions)})


def parse_assumptions_text(text: str, source: str = "advice.yaml") -> Assumptions:
    """The advice file's assumptions, the defaults where it says nothing."""
    document = YamlText(text, source, AdviceConfigError).value

    def problem(path: tuple[str | int, ...], message: str) -> AdviceConfigError:
        return AdviceConfigError(": ".join((source, *map(str, path[:1]), message)))

    return check(AdviceFile, document or {}, problem).assumptions()
