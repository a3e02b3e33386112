"""Wire contracts: versioned, frozen, unknown fields rejected.

JSON Schema files generated from these models live in ``schemas/json`` (``costflux schemas``
rewrites them; a test fails when they drift).
"""

from schemas.alert import AlertEvent, alert_fingerprint
from schemas.deadletter import DeadLetterReason, DeadLetterRecord
from schemas.gpu import GpuSample, PricingTier
from schemas.usage import UsageEvent

__all__ = [
    "AlertEvent",
    "DeadLetterReason",
    "DeadLetterRecord",
    "GpuSample",
    "PricingTier",
    "UsageEvent",
    "alert_fingerprint",
]
