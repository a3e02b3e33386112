"""GPU sample: one per GPU (or MIG instance) per interval, topic ``gpu.samples.v1``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas._types import EventTime, Identifier, Labels, epoch_ms

__all__ = ["GpuSample", "PricingTier"]

PricingTier = Literal["on_demand", "spot", "reserved_1y"]


class GpuSample(BaseModel):
    """What one GPU did during one sampling interval."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, title="GpuSample v1"
    )

    event_id: Identifier
    ts: EventTime = Field(description="end of the interval")
    interval_s: Annotated[float, Field(gt=0, le=3600)]
    node: Identifier
    gpu_uuid: Identifier
    gpu_index: Annotated[int, Field(ge=0)]
    gpu_model: Identifier = Field(description="the name NVML reports")
    gpu_type: Identifier = Field(description="pricing key in gpu_pricing")
    pricing_tier: PricingTier = "on_demand"
    utilization_pct: Annotated[float, Field(ge=0, le=100)]
    memory_used_bytes: Annotated[int, Field(ge=0)]
    memory_total_bytes: Annotated[int, Field(ge=0)]
    power_watts: Annotated[float, Field(ge=0)] | None = None
    labels: Labels = Field(default_factory=dict)

    @property
    def ts_ms(self) -> int:
        return epoch_ms(self.ts)
