"""Duplicate detection on Redis: an event_id counts at the first position it was seen at.

Each event_id is remembered with the position (topic:partition:offset[:index]) it was first
counted at, for the dedup horizon. A later sighting at another position is a duplicate; a
sighting at the same position is the same message re-read after a crash, and counts again so
the replayed flush reproduces its partials exactly (the combiner drops the repeat).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import redis

__all__ = ["RedisDeduplicator"]

# One round trip per chunk, ids and positions as two JSON arrays: packing one argument per
# event in redis-py cost more than the whole rest of the hot path. SET NX EX keeps the first
# position; an equal position is a replay. Answers a string of '1' (counts) / '0' (duplicate).
# The keys are built inside the script, so this needs a single Redis (or a sentinel pair),
# not Redis Cluster.
_FIRST_SIGHTING = """
local prefix, ttl, source = ARGV[1], ARGV[2], ARGV[5]
local ids, positions = cjson.decode(ARGV[3]), cjson.decode(ARGV[4])
local out = {}
for i = 1, #ids do
  local key, position = prefix .. ids[i], source .. positions[i]
  if redis.call('SET', key, position, 'NX', 'EX', ttl) then
    out[i] = '1'
  elseif redis.call('GET', key) == position then
    out[i] = '1'
  else
    out[i] = '0'
  end
end
return table.concat(out)
"""

_CHUNK = 20000


class RedisDeduplicator:
    """Decides, for a batch of (event_id, position), which ones count."""

    def __init__(self, client: redis.Redis, namespace: str, horizon_s: int) -> None:
        self._client = client
        self._prefix = f"{namespace}:seen:"
        self._horizon_s = horizon_s
        self._script = client.register_script(_FIRST_SIGHTING)

    def first_sightings(
        self, ids: Sequence[str], positions: Sequence[str], source: str = ""
    ) -> list[bool]:
        """True where the event counts (first sighting, or a re-read of the same position).

        A position is ``source + positions[i]``: the source (topic:partition:) is sent once.
        """
        verdicts: list[bool] = []
        for start in range(0, len(ids), _CHUNK):
            chunk = slice(start, start + _CHUNK)
            args: list[str | int | bytes] = [
                self._prefix,
                self._horizon_s,
                orjson.dumps(list(ids[chunk])),
                orjson.dumps(list(positions[chunk])),
                source,
            ]
            answer = self._script(keys=[], args=args)
            verdicts.extend(flag == 49 for flag in answer)  # 49 is b"1"
        return verdicts
