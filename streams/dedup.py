"""Duplicate detection on Redis: an event_id counts at the first position it was seen at.

Each event_id is remembered with the position (topic:partition:offset[:index]) it was first
counted at, for the dedup horizon. A later sighting at another position is a duplicate; a
sighting at the same position is the same message re-read after a crash, and counts again so
the replayed flush reproduces its partials exactly (the combiner drops the repeat).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

__all__ = ["RedisDeduplicator"]

# One round trip per chunk. SET NX EX keeps the first position; an equal position is a replay.
_FIRST_SIGHTING = """
local ttl = ARGV[1]
local out = {}
for i, key in ipairs(KEYS) do
  local position = ARGV[i + 1]
  if redis.call('SET', key, position, 'NX', 'EX', ttl) then
    out[i] = 1
  elseif redis.call('GET', key) == position then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

_CHUNK = 2000


class RedisDeduplicator:
    """Decides, for a batch of (event_id, position), which ones count."""

    def __init__(self, client: redis.Redis, namespace: str, horizon_s: int) -> None:
        self._client = client
        self._prefix = f"{namespace}:seen:"
        self._horizon_s = horizon_s
        self._script = client.register_script(_FIRST_SIGHTING)

    def first_sightings(self, ids: Sequence[str], positions: Sequence[str]) -> list[bool]:
        """True where the event counts (first sighting, or a re-read of the same position)."""
        verdicts: list[bool] = []
        for start in range(0, len(ids), _CHUNK):
            keys = [self._prefix + event_id for event_id in ids[start : start + _CHUNK]]
            args: list[str | int] = [self._horizon_s, *positions[start : start + _CHUNK]]
            result = self._script(keys=keys, args=args)
            verdicts.extend(bool(flag) for flag in result)
        return verdicts
