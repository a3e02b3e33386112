"""Wire contracts: versioned, frozen, unknown fields rejected.

JSON Schema files generated from these models live in ``schemas/json`` (``costflux schemas``
rewrites them; a test fails when they drift).
"""

from costflux.schemas.alert import AlertEvent, alert_fingerprint
from costflux.schemas.deadletter import DeadLetterReason, DeadLetterRecord
from costflux.schemas.gpu import GpuSample, PricingTier
from costflux.schemas.usage import UsageEvent

__all__ = [
    "AlertEvent",
    "DeadLetterReason",
    "DeadLetterRecord",
    "GpuSample",
    "PricingTier",
    "UsageEvent",
    "alert_fingerprint",
]
