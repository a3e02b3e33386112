"""Usage event: one per inference request, topic ``llm.usage.v1``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, model_validator

from costflux.schemas._types import EventTime, Identifier, Labels, TokenCount, epoch_ms

__all__ = ["INPUT_PARTS", "OUTPUT_PARTS", "SERVICE_TIERS", "UsageEvent", "parts_within_totals"]


#: Kinds of input tokens the input total is made of (the rest is text, uncached, unwritten).
INPUT_PARTS = ("cached_input_tokens", "cache_write_input_tokens", "cache_write_1h_input_tokens",
               "audio_input_tokens", "image_input_tokens")
#: Kinds of output tokens the output total is made of (the rest is text).
OUTPUT_PARTS = ("reasoning_tokens", "audio_output_tokens")
SERVICE_TIERS = ("default", "priority", "flex")


_OTHER_PARTS = frozenset(INPUT_PARTS[1:] + OUTPUT_PARTS)


def parts_within_totals(fields: Mapping[str, Any]) -> bool:
    """The rule across fields: the kinds of input (output) tokens are parts of the input
    (output) total, so together they cannot exceed it."""
    get = fields.get
    # Every event is checked on the hot path; most carry no kind beyond cache reads.
    if _OTHER_PARTS.isdisjoint(fields):
        return bool(get("cached_input_tokens", 0) <= fields["input_tokens"])
    return bool(
        sum(get(name, 0) for name in INPUT_PARTS) <= fields["input_tokens"]
        and sum(get(name, 0) for name in OUTPUT_PARTS) <= fields["output_tokens"]
    )


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
        0, description="part of input_tokens read from a prompt cache"
    )
    cache_write_input_tokens: TokenCount = Field(
        0, description="part of input_tokens written to a prompt cache that lives 5 minutes "
        "(Anthropic's cache_creation_input_tokens)"
    )
    cache_write_1h_input_tokens: TokenCount = Field(
        0, description="part of input_tokens written to a prompt cache that lives 1 hour"
    )
    audio_input_tokens: TokenCount = Field(0, description="part of input_tokens that is audio")
    image_input_tokens: TokenCount = Field(0, description="part of input_tokens that is images")
    reasoning_tokens: TokenCount = Field(
        0, description="part of output_tokens spent reasoning (billed as output unless priced)"
    )
    audio_output_tokens: TokenCount = Field(
        0, description="part of output_tokens that is audio"
    )
    web_search_calls: Annotated[int, Strict(), Field(ge=0, le=10_000)] = Field(
        0, description="web searches the request made (priced per call)"
    )
    batch: StrictBool = Field(False, description="sent through the provider's batch API")
    service_tier: Literal["default", "priority", "flex"] = Field(
        "default", description="the provider's service tier the request was served at"
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
    def _parts_within_totals(self) -> UsageEvent:
        if not parts_within_totals(self.__dict__):
            inputs = " + ".join(n for n in INPUT_PARTS if getattr(self, n))
            outputs = " + ".join(n for n in OUTPUT_PARTS if getattr(self, n))
            if sum(getattr(self, n) for n in INPUT_PARTS) > self.input_tokens:
                raise ValueError(f"{inputs} exceeds input_tokens; they are parts of the input")
            raise ValueError(f"{outputs} exceeds output_tokens; they are parts of the output")
        return self

    @property
    def ts_ms(self) -> int:
        return epoch_ms(self.ts)


