"""The cost store: window rows and the source offsets they cover, in Redis, applied atomically.

Each ingest flush (one source partition's offset range, pre-aggregated) is applied by one
Lua script, which Redis runs as one step that nothing interleaves with: it does nothing
unless the partition's stored state is the one the flush was cut after, and otherwise
claims the flush's event ids for deduplication, adds its rows to their windows and moves
the partition's stored state (next offset, clock) past it. A replayed flush, or one from a
worker that has lost the partition, changes nothing, and a crash at any moment leaves either
all of a flush applied or none of it. The stored state, not Kafka's committed offset, is
where a partition resumes. See README, "Exactly once without a combine stage".

Layout (``ns`` is the consumer group, ``v2`` the rows' text version, costflux.core.rows):

- ``ns:v2:usage:<size>:<start>`` — hash: usage row key -> sums; ``ns:v2:gpu:<size>:<start>``
  the same for GPU rows. Expire ``retention_s(size)`` after their last write.
- ``ns:v2:windows:<size>`` — sorted set of the window starts held (either kind).
- ``ns:v2:event_time_ms`` — the newest finest-window end applied ("now" of relative queries).
- ``ns:v2:sources`` — hash: ``topic:partition`` -> ``next|max_ts|topic_id``: the next offset
  to apply, the partition's newest event time (its clock: lateness and watermark), and the id
  of the topic's log the offsets belong to. Never expires.
- ``ns:v2:activity`` — hash: ``topic:partition`` -> wall ms of its last data or assignment
  (an idle partition stops holding the watermark).
- ``ns:v2:principals:<label>:<day>`` — hash: an ``api_key`` or ``end_user`` value -> its usage
  sums that UTC day; ``ns:v2:budget_spend:<counter>:<period start>`` — hash: an enforced
  budget's spend in one period (costflux.core.spend). Each with a sorted set of the starts
  held, like the windows, and its own retention.
- ``ns:v2:seen:<kind>:<event_id>`` — an id counted, for the dedup horizon. Claimed in the
  same step as the rows that count it (and released if that step applies nothing), so a
  claim exists exactly when its event is in the totals: a later sighting is a duplicate.

One flush writes many windows' keys, built inside the script: the store is one Redis primary
(with a replica), not Redis Cluster. Every sum is added digit by digit, exactly, whatever its
size (Redis scripts compute in doubles, which are exact only to 2^53).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson
import redis

from costflux.core.aggregate import FlushRows, Window
from costflux.core.rows import (
    ROWS_VERSION,
    DimKey,
    encode_dims,
    encode_sums,
    overflow_dimensions,
)

__all__ = [
    "AppliedFlush",
    "CostStore",
    "FlushWrite",
    "Outcome",
    "SourceState",
    "StoreKeys",
]


class StoreKeys:
    """The cost store's key names for one consumer group (the one place that spells them)."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}:v{ROWS_VERSION}"

    def usage(self, size_s: int, start_ms: int) -> str:
        return f"{self.prefix}:usage:{size_s}:{start_ms}"

    def gpu(self, size_s: int, start_ms: int) -> str:
        return f"{self.prefix}:gpu:{size_s}:{start_ms}"

    def index(self, size_s: int) -> str:
        return f"{self.prefix}:windows:{size_s}"

    @property
    def event_time(self) -> str:
        return f"{self.prefix}:event_time_ms"

    @property
    def sources(self) -> str:
        return f"{self.prefix}:sources"

    @property
    def activity(self) -> str:
        return f"{self.prefix}:activity"

    def principals(self, label: str, day_ms: int) -> str:
        """One UTC day's usage per value of a principal label (costflux.core.spend)."""
        return f"{self.prefix}:principals:{label}:{day_ms}"

    def principal_days(self, label: str) -> str:
        return f"{self.prefix}:principal_days:{label}"

    def budget_spend(self, counter_id: str, period_start_ms: int) -> str:
        """An enforced budget's counter for one period: value ("" for the whole scope) ->
        cost in pico-dollars."""
        return f"{self.prefix}:budget_spend:{counter_id}:{period_start_ms}"

    def budget_periods(self, counter_id: str) -> str:
        return f"{self.prefix}:budget_periods:{counter_id}"

    def seen(self, kind: str) -> str:
        """The prefix of a kind's dedup keys (each kind has its own event ids)."""
        return f"{self.prefix}:seen:{kind}:"


@dataclass(frozen=True, slots=True)
class SourceState:
    """What the store holds for one source partition: where it resumes, and its clock."""

    next_offset: int | None = None  # None: nothing of it applied yet
    max_ts_ms: int | None = None
    topic_id: str = ""

    @property
    def token(self) -> str:
        """Its stored text: what a flush cut after this state expects to find."""
        if self.next_offset is None:
            return ""
        max_ts = "" if self.max_ts_ms is None else str(self.max_ts_ms)
        return f"{self.next_offset}|{max_ts}|{self.topic_id}"

    @classmethod
    def parse(cls, text: str | bytes | None) -> SourceState:
        raw = (text.decode() if isinstance(text, bytes) else text) or ""
        if not raw:
            return cls()
        next_offset, max_ts, topic_id = raw.split("|", 2)
        return cls(int(next_offset), int(max_ts) if max_ts else None, topic_id)


@dataclass(frozen=True, slots=True)
class FlushWrite:
    """One flush, ready to apply: its partition's state before and after, the ids to claim
    and the rows to add."""

    source: str  # "topic:partition"
    before: SourceState
    after: SourceState
    event_ids: Sequence[str]
    duplicates: Sequence[int]  # indexes into event_ids known to be duplicates (not in rows)
    rows: FlushRows
    wall_ms: int


class Outcome(Enum):
    APPLIED = "applied"
    #: The stored state is not ``before``: another worker applied this range, or the store
    #: lost writes (a Redis restarted from an older append-only file, or emptied).
    MOVED = "moved"
    #: Ids other than ``duplicates`` were counted elsewhere first: re-aggregate without them.
    DUPLICATES = "duplicates"


@dataclass(frozen=True, slots=True)
class AppliedFlush:
    outcome: Outcome
    stored: SourceState | None = None  # MOVED: what the store holds
    duplicates: tuple[int, ...] = ()  # DUPLICATES: every duplicate's index
    overflowed: int = 0  # APPLIED: new label combinations folded into overflow rows


# KEYS: sources hash, activity hash, event-time key.
# ARGV: 1 source, 2 expected state, 3 new state, 4 dedup key prefix, 5 horizon s,
#   6 ids (JSON), 7 known duplicates ("i,j", 1-based), 8 wall ms, 9 newest finest-window end
#   (0: none), 10 max usage rows per window, then per window: rows key, index key, start,
#   ttl s, row count, and per row its key, overflow key ("" = never folded) and sums.
# Reads and adds every row before its first write (the claims, then the rows), so bad stored
# data stops it before it has changed anything.
_APPLY_FLUSH = r"""
local function add_integers(a, b)
  if #a < 16 and #b < 16 then
    local x, y = tonumber(a), tonumber(b)
    if x == nil or y == nil then error('costflux: a stored sum is not an integer') end
    return string.format('%.0f', x + y)
  end
  local limbs, carry, ia, ib = {}, 0, #a, #b
  while ia > 0 or ib > 0 or carry > 0 do
    local da = ia > 0 and tonumber(string.sub(a, math.max(1, ia - 8), ia)) or 0
    local db = ib > 0 and tonumber(string.sub(b, math.max(1, ib - 8), ib)) or 0
    if da == nil or db == nil then error('costflux: a stored sum is not an integer') end
    local sum = da + db + carry
    carry = math.floor(sum / 1e9)
    limbs[#limbs + 1] = sum - carry * 1e9
    ia, ib = ia - 9, ib - 9
  end
  local parts = {string.format('%d', limbs[#limbs])}
  for k = #limbs - 1, 1, -1 do parts[#parts + 1] = string.format('%09d', limbs[k]) end
  return table.concat(parts)
end

-- Field by field, walking both texts once; a field either side lacks reads as 0, and adding
-- 0 (most fields of most rows) copies the other side.
local function add_rows(current, added)
  local out, count = {}, 0
  local ca, la, cb, lb = 1, #current, 1, #added
  while ca <= la or cb <= lb do
    local a, b = '0', '0'
    if ca <= la then
      local stop = string.find(current, ',', ca, true) or la + 1
      a, ca = string.sub(current, ca, stop - 1), stop + 1
    end
    if cb <= lb then
      local stop = string.find(added, ',', cb, true) or lb + 1
      b, cb = string.sub(added, cb, stop - 1), stop + 1
    end
    count = count + 1
    if b == '0' then out[count] = a
    elseif a == '0' then out[count] = b
    else out[count] = add_integers(a, b) end
  end
  return table.concat(out, ',')
end

local stored = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if stored ~= ARGV[2] then return {0, stored} end

local max_rows = tonumber(ARGV[10])
local writes, windows, overflowed, i = {}, {}, 0, 11
while i <= #ARGV do
  local rows_key, count = ARGV[i], tonumber(ARGV[i + 4])
  windows[#windows + 1] = {rows_key, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]}
  local held = redis.call('HLEN', rows_key)
  local pending, order = {}, {}
  i = i + 5
  for _ = 1, count do
    local field, overflow, sums = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    i = i + 3
    local current = pending[field] or redis.call('HGET', rows_key, field)
    if not current and overflow ~= '' and held >= max_rows then
      overflowed = overflowed + 1
      field = overflow
      current = pending[field] or redis.call('HGET', rows_key, field)
    end
    if current then sums = add_rows(current, sums) else held = held + 1 end
    if not pending[field] then order[#order + 1] = field end
    pending[field] = sums
  end
  for _, field in ipairs(order) do writes[#writes + 1] = {rows_key, field, pending[field]} end
end

local ids = cjson.decode(ARGV[6])
local duplicates = {}
for i = 1, #ids do
  if not redis.call('SET', ARGV[4] .. ids[i], '1', 'NX', 'EX', ARGV[5]) then
    duplicates[#duplicates + 1] = i
  end
end
local found = table.concat(duplicates, ',')
if found ~= ARGV[7] then
  -- The rows counted ids another flush counted first: release this step's claims (every id
  -- but the duplicates) and say which, so the flush is re-aggregated without them.
  local taken = {}
  for _, i in ipairs(duplicates) do taken[i] = true end
  for i = 1, #ids do
    if not taken[i] then redis.call('DEL', ARGV[4] .. ids[i]) end
  end
  return {2, found}
end

for _, write in ipairs(writes) do redis.call('HSET', write[1], write[2], write[3]) end
for _, window in ipairs(windows) do
  local start, ttl = tonumber(window[3]), tonumber(window[4])
  redis.call('EXPIRE', window[1], ttl)
  redis.call('ZADD', window[2], start, window[3])
  redis.call('ZREMRANGEBYSCORE', window[2], '-inf',
             '(' .. string.format('%.0f', start - 1000 * ttl))
end
local newest = tonumber(ARGV[9])
if newest > tonumber(redis.call('GET', KEYS[3]) or '0') then
  redis.call('SET', KEYS[3], ARGV[9])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[8])
return {1, overflowed}
"""


class CostStore:
    """Applies flushes to the cost store and reads the source partitions' states.

    Synchronous (redis-py): it runs on ingest's threads. The serving side reads the same
    keys through ``costflux.agents.serving.ServingView``.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        *,
        dedup_kind: str,
        dedup_horizon_s: int,
        retention_s: Callable[[int], int],
        finest_window_s: int,
        window_max_rows: int,
        principal_retention_s: int = 35 * 86_400,
    ) -> None:
        self._client = client
        self.keys = StoreKeys(namespace)
        self._seen_prefix = self.keys.seen(dedup_kind)
        self._horizon_s = dedup_horizon_s
        self._retention_s = retention_s  # window size in s -> how long its rows are kept
        self._finest_s = finest_window_s
        self._max_rows = window_max_rows
        self._principal_retention_s = principal_retention_s
        self._apply = client.register_script(_APPLY_FLUSH)

    def sources(self, names: Sequence[str]) -> dict[str, SourceState]:
        """The stored state of each source partition (empty where nothing is applied)."""
        if not names:
            return {}
        raw = self._client.hmget(self.keys.sources, list(names))
        return {name: SourceState.parse(text) for name, text in zip(names, raw, strict=True)}

    def mark_active(self, names: Iterable[str], wall_ms: int) -> None:
        """Count ``names`` as active from ``wall_ms`` (a newly assigned partition holds the
        watermark until it reports or goes idle)."""
        mapping = dict.fromkeys(names, str(wall_ms))
        if mapping:
            self._client.hset(self.keys.activity, mapping=mapping)  # type: ignore[arg-type]

    def apply(self, flush: FlushWrite) -> AppliedFlush:
        """Apply ``flush`` in one atomic step, or nothing (see ``Outcome``)."""
        args: list[str | int | bytes] = [
            flush.source,
            flush.before.token,
            flush.after.token,
            self._seen_prefix,
            self._horizon_s,
            orjson.dumps(list(flush.event_ids)),
            ",".join(str(index + 1) for index in sorted(flush.duplicates)),
            flush.wall_ms,
            self._newest_finest_end(flush.rows),
            self._max_rows,
        ]
        self._add_windows(args, flush.rows.usage, self.keys.usage, _overflow_key)
        self._add_windows(args, flush.rows.gpu, self.keys.gpu, None)
        self._add_spend(args, flush.rows)
        status, detail = self._apply(
            keys=[self.keys.sources, self.keys.activity, self.keys.event_time], args=args)
        if status == 1:
            return AppliedFlush(Outcome.APPLIED, overflowed=int(detail))
        text = detail.decode() if isinstance(detail, bytes) else str(detail)
        if status == 0:
            return AppliedFlush(Outcome.MOVED, stored=SourceState.parse(text))
        return AppliedFlush(Outcome.DUPLICATES,
                            duplicates=tuple(int(i) - 1 for i in text.split(",") if i))

    def _add_windows(
        self,
        args: list[str | int | bytes],
        windows: Mapping[Window, Mapping[Any, list[int]]],
        rows_key: Callable[[int, int], str],
        overflow_of: Callable[[tuple[str, ...]], str] | None,
    ) -> None:
        encoded: dict[tuple[str, ...], tuple[str, str]] = {}
        for (size_s, start_ms), rows in windows.items():
            args += [rows_key(size_s, start_ms), self.keys.index(size_s), start_ms,
                     self._retention_s(size_s), len(rows)]
            for dims, sums in rows.items():
                names = encoded.get(dims)
                if names is None:
                    names = encoded[dims] = (
                        encode_dims(dims), overflow_of(dims) if overflow_of else "")
                args += [names[0], names[1], encode_sums(sums)]

    def _add_spend(self, args: list[str | int | bytes], rows: FlushRows) -> None:
        """The principals' days and the budget counters, as sections shaped like windows (never
        folded into overflow rows: their values are the point)."""
        sections = [
            (self.keys.principals(label, day_ms), self.keys.principal_days(label), day_ms,
             self._principal_retention_s, values)
            for (label, day_ms), values in rows.principals.items()
        ] + [
            (self.keys.budget_spend(counter_id, start_ms), self.keys.budget_periods(counter_id),
             start_ms, keep_s, values)
            for (counter_id, start_ms, keep_s), values in rows.budget_spend.items()
        ]
        for rows_key, index_key, start_ms, keep_s, values in sections:
            args += [rows_key, index_key, start_ms, keep_s, len(values)]
            for value, sums in values.items():
                args += [value, "", encode_sums(sums)]

    def _newest_finest_end(self, rows: FlushRows) -> int:
        # A large window only says events exist somewhere inside it; the finest windows are
        # what moves "now" forward precisely.
        ends = [start + size_s * 1000 for windows in (rows.usage, rows.gpu)
                for size_s, start in windows if size_s == self._finest_s]
        return max(ends, default=0)


def _overflow_key(dims: tuple[str, ...]) -> str:
    usage: DimKey = dims  # type: ignore[assignment]
    return encode_dims(overflow_dimensions(usage[0]))
