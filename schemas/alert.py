"""Alert event: one per state transition of a rule instance, topic ``cost.alerts.v1``."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from costflux.schemas._types import Identifier, Labels

__all__ = ["AlertEvent", "alert_fingerprint"]


def alert_fingerprint(rule: str, labels: dict[str, str], period: str) -> str:
    """Deterministic id: the same rule, labels and period always give the same alert_id."""
    canonical = rule + "\x1f" + "\x1f".join(f"{k}={labels[k]}" for k in sorted(labels))
    return hashlib.sha256((canonical + "\x1f" + period).encode()).hexdigest()[:32]


class AlertEvent(BaseModel):
    """A firing or resolved alert."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, allow_inf_nan=False, title="AlertEvent v1"
    )

    alert_id: Identifier = Field(description="fingerprint of rule + labels + period")
    rule: Identifier
    severity: Literal["info", "warning", "critical"]
    state: Literal["firing", "resolved"]
    labels: Labels = Field(default_factory=dict)
    value: float
    threshold: float
    summary: str
    starts_at: datetime
    ends_at: datetime | None = None
    repeat: Annotated[int, Field(ge=0)] = Field(
        default=0, description="0 for the transition; n for the n-th reminder while firing"
    )
