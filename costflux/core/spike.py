"""Cost spike: cost in the last hour over the mean hourly cost of the previous 24 hours.

The seed's CostSpike (``increase[1h] / avg_over_time(increase[1h])[24h:1h] > 2``), on exact
hourly sums in event time. A group seen for less than ``min_history_ms`` has no
ratio (a new team's first hour is not a spike of anything), and neither has a group whose
baseline is zero (a jump from nothing is HighDailyCost's to catch, not a ratio's).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

__all__ = ["BASELINE_HOURS", "HOUR_MS", "spike_ratio"]

HOUR_MS = 3_600_000
BASELINE_HOURS = 24


def spike_ratio(
    hourly_pico: Mapping[int, int], hour_start_ms: int, first_seen_ms: int,
    min_history_ms: int,
) -> Fraction | None:
    """The spike ratio of the hour starting at ``hour_start_ms``, exactly.

    ``hourly_pico``: the group's cost per hour start (hours without cost may be absent);
    ``first_seen_ms``: the start of the first hour the group had cost. The baseline is the
    mean over the previous 24 hours, or over the hours since first seen when fewer.

    >>> hours = {h * HOUR_MS: 100 for h in range(24)} | {24 * HOUR_MS: 250}
    >>> spike_ratio(hours, 24 * HOUR_MS, 0, 6 * HOUR_MS)
    Fraction(5, 2)
    >>> spike_ratio(hours, 3 * HOUR_MS, 0, 6 * HOUR_MS) is None  # three hours of history
    True
    """
    history_hours = min(BASELINE_HOURS, (hour_start_ms - first_seen_ms) // HOUR_MS)
    if history_hours < 1 or history_hours * HOUR_MS < min_history_ms:
        return None
    baseline = sum(
        hourly_pico.get(hour_start_ms - back * HOUR_MS, 0)
        for back in range(1, history_hours + 1)
    )
    if baseline <= 0:
        return None
    return Fraction(hourly_pico.get(hour_start_ms, 0) * history_hours, baseline)
