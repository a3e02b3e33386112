"""GPU sample: one per GPU (or MIG instance) per interval, topic ``gpu.samples.v1``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from costflux.schemas._types import EventTime, Identifier, Labels, epoch_ms

__all__ = ["GpuSample", "MigInstance", "PricingTier", "UNALLOCATED_PROFILE"]

PricingTier = Literal["on_demand", "spot", "reserved_1y"]
#: The ``profile`` of the sample that carries a MIG-mode GPU's slices no instance holds.
UNALLOCATED_PROFILE = "unallocated"


class MigInstance(BaseModel):
    """Which slice of a MIG-mode GPU a sample measured, and its share of the whole GPU.

    A MIG-mode GPU is sampled per compute instance, plus one ``unallocated`` sample for the
    slices no instance holds, so the GPU's shares always add up to the whole GPU: its cost is
    neither lost nor counted twice.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, title="MigInstance")

    parent_gpu_uuid: Identifier
    profile: Identifier = Field(description="e.g. 1g.10gb, or 'unallocated'")
    gpu_instance_id: Annotated[int, Field(ge=0)] | None = None
    compute_instance_id: Annotated[int, Field(ge=0)] | None = None
    slices: Annotated[int, Field(ge=1, le=64)] = Field(description="compute slices it holds")
    slices_total: Annotated[int, Field(ge=1, le=64)] = Field(
        description="compute slices of the whole GPU (7 on an A100 or H100)"
    )

    @model_validator(mode="after")
    def _slices_within_the_gpu(self) -> MigInstance:
        if self.slices > self.slices_total:
            raise ValueError("mig.slices: must not exceed mig.slices_total")
        return self


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
    utilization_pct: Annotated[float, Field(ge=0, le=100)] | None = Field(
        default=None,
        description="required for a whole GPU; null for a MIG instance (NVML measures none)",
    )
    memory_used_bytes: Annotated[int, Field(ge=0)]
    memory_total_bytes: Annotated[int, Field(ge=0)]
    power_watts: Annotated[float, Field(ge=0)] | None = None
    labels: Labels = Field(default_factory=dict)
    mig: MigInstance | None = None

    @model_validator(mode="after")
    def _utilization_measured_for_a_whole_gpu(self) -> GpuSample:
        if self.utilization_pct is None and self.mig is None:
            raise ValueError("utilization_pct: required unless the sample is a MIG instance")
        return self

    @property
    def ts_ms(self) -> int:
        return epoch_ms(self.ts)
