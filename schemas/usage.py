"""Usage event: one per inference request, topic ``llm.usage.v1``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from schemas._types import EventTime, Identifier, Labels, TokenCount, epoch_ms

__all__ = ["UsageEvent", "cached_within_input"]


def cached_within_input(fields: Mapping[str, Any]) -> bool:
    """The rule across fields: cached input tokens are part of the input tokens."""
    return bool(fields.get("cached_input_tokens", 0) <= fields["input_tokens"])


class UsageEvent(BaseModel):
    """One inference request's token usage.

    >>> UsageEvent.model_validate({"event_id": "r1", "ts": "2024-05-01T12:00:00Z",
    ...     "model": "gpt-4", "input_tokens": 100, "output_tokens": 20}).ts_ms
    1714564800000
    """

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, title="UsageEvent v1"
    )

    event_id: Identifier = Field(description="unique per request; duplicates count once")
    ts: EventTime
    model: Identifier = Field(description="pricing key in model_costs")
    input_tokens: TokenCount
    output_tokens: TokenCount
    cached_input_tokens: TokenCount = Field(
        0, description="part of input_tokens served from a prompt cache"
    )
    gpu_seconds: Annotated[float, Field(ge=0)] | None = None
    latency_ms: Annotated[float, Field(ge=0)] | None = None
    status: Literal["ok", "error"] = "ok"
    deployment: Identifier | None = None
    labels: Labels = Field(default_factory=dict)
    cache_hit: StrictBool = Field(
        False,
        description="answered from a semantic cache (costflux cache): the tokens are the cached "
        "response's, not sent upstream; priced as avoided cost (savings), never as cost",
    )

    @model_validator(mode="after")
    def _cached_within_input(self) -> UsageEvent:
        if not cached_within_input(self.__dict__):
            raise ValueError(
                "cached_input_tokens exceeds input_tokens; cached tokens are part of the input"
            )
        return self

    @property
    def ts_ms(self) -> int:
        return epoch_ms(self.ts)


