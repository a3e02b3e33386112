"""Dead-letter record: an input that could not be counted, and why (``cost.deadletter.v1``)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["DeadLetterReason", "DeadLetterRecord"]


class DeadLetterReason(StrEnum):
    """Why an input was not counted; one Prometheus counter per value."""

    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NEGATIVE_VALUE = "negative_value"
    ABSURD_VALUE = "absurd_value"
    NOT_FINITE = "not_finite"
    BAD_TIMESTAMP = "bad_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_GPU_TYPE = "unknown_gpu_type"
    OVERSIZED_LABELS = "oversized_labels"
    INVALID_VALUE = "invalid_value"
    LATE = "late"
    WEBHOOK_REJECTED = "webhook_rejected"
    WEBHOOK_UNAVAILABLE = "webhook_unavailable"


class DeadLetterRecord(BaseModel):
    """The rejected input, byte for byte, with where it came from and why."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="DeadLetterRecord v1")

    reason: DeadLetterReason
    detail: str = Field(description="what was wrong and what to fix; never a secret")
    source_topic: str
    source_partition: int
    source_offset: int
    batch_index: int | None = Field(
        None, description="position inside a batched message, when the message held many"
    )
    original_b64: str = Field(description="the rejected input (message or batch element), base64")
