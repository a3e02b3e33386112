"""The gateway's side of the enforced budgets' counters in Redis: read the spend, hold and
settle reservations.

The counters are written by ingest's atomic store step (costflux.core.spend); this module
only reads them, each at most once a second per scope however many requests ask (one read in
flight per counter, shared by every request waiting on it).

Reservation mode keeps, per scope, the requests admitted and not yet counted (event id ->
``nano-dollars|deadline ms``) and their running total. Admission is one Lua step that adds the
counter, the total held and the request's own bound, and holds the bound only if every scope
stays within its amount. A hold is dropped once its event's dedup claim exists (the store step
claims an event id in the same step that adds its cost to the counter, so from then on the
counter holds it; only settled holds are checked, oldest first: an event is published after
its hold is settled) or when its deadline passes. Each admission prunes a bounded number of
holds, so its cost does not grow with the holds pending. Holds compare in nano-dollars,
rounded up: exact in a Lua double up to $9,007,199 per budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from costflux.core.enforcement import Scope
from costflux.core.errors import UnavailableError
from costflux.streams.cost_store import StoreKeys

__all__ = ["BudgetCounters", "CountersUnavailable", "Hold"]

# Per scope, four keys under one prefix: ``<p>`` hash event id -> "nano|deadline ms", ``<p>:total``
# the sum of its nanos, ``<p>:settled`` the ids whose events may be counted (settled, by time),
# ``<p>:deadlines`` every id by deadline. The shared part: drop one hold, and prune a scope
# (expired holds, and the oldest settled ones whose events the pipeline has claimed; at most
# _PRUNE of each per call, so an admission costs the same however many holds are pending).
_COMMON = r"""
local function drop(p, id)
  local value = redis.call('HGET', p, id)
  if value then
    local bar = string.find(value, '|', 1, true)
    redis.call('DECRBY', p .. ':total', string.sub(value, 1, bar - 1))
    redis.call('HDEL', p, id)
  end
  redis.call('ZREM', p .. ':settled', id)
  redis.call('ZREM', p .. ':deadlines', id)
end
local function prune(p, now, claims, limit)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':deadlines', '-inf', now - 1,
                                 'LIMIT', 0, limit)) do
    drop(p, id)
  end
  for _, id in ipairs(redis.call('ZRANGE', p .. ':settled', 0, limit - 1)) do
    if redis.call('EXISTS', claims .. id) == 1 then drop(p, id) end
  end
end
local function keep(p, ttl)
  for _, key in ipairs({p, p .. ':total', p .. ':settled', p .. ':deadlines'}) do
    redis.call('EXPIRE', key, ttl)
  end
end
"""

# KEYS: per scope its counter and its holds' prefix. ARGV: 1 scopes, 2 event id, 3 bound
# (nano), 4 deadline ms, 5 now ms, 6 dedup claim prefix, 7 holds' ttl s, 8 prune limit, then
# per scope its counter field and its amount (nano).
_HOLD = _COMMON + r"""
local function nano(pico)
  if not pico then return 0 end
  local n = #pico
  if n <= 3 then return tonumber(pico) > 0 and 1 or 0 end
  local whole = tonumber(string.sub(pico, 1, n - 3))
  if tonumber(string.sub(pico, n - 2)) > 0 then whole = whole + 1 end
  return whole
end
local scopes, id, bound = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local now = tonumber(ARGV[5])
for i = 1, scopes do
  local p = KEYS[2 * i]
  prune(p, now, ARGV[6], tonumber(ARGV[8]))
  local spent = nano(redis.call('HGET', KEYS[2 * i - 1], ARGV[7 + 2 * i]))
  local held = tonumber(redis.call('GET', p .. ':total') or '0')
  if spent + held + bound > tonumber(ARGV[8 + 2 * i]) then
    return {0, i, string.format('%.0f', spent), string.format('%.0f', held)}
  end
end
for i = 1, scopes do
  local p = KEYS[2 * i]
  drop(p, id)
  redis.call('HSET', p, id, ARGV[3] .. '|' .. ARGV[4])
  redis.call('INCRBY', p .. ':total', ARGV[3])
  redis.call('ZADD', p .. ':deadlines', ARGV[4], id)
  keep(p, ARGV[7])
end
return {1}
"""

# KEYS: the scopes' holds' prefixes. ARGV: 1 event id, 2 cost (nano) or "" (release),
# 3 deadline ms, 4 now ms, 5 holds' ttl s.
_SETTLE = _COMMON + r"""
for i = 1, #KEYS do
  local p = KEYS[i]
  if ARGV[2] == '' then
    drop(p, ARGV[1])
  elseif redis.call('HEXISTS', p, ARGV[1]) == 1 then
    drop(p, ARGV[1])
    redis.call('HSET', p, ARGV[1], ARGV[2] .. '|' .. ARGV[3])
    redis.call('INCRBY', p .. ':total', ARGV[2])
    redis.call('ZADD', p .. ':settled', ARGV[4], ARGV[1])
    redis.call('ZADD', p .. ':deadlines', ARGV[3], ARGV[1])
    keep(p, ARGV[5])
  end
end
return 1
"""
#: Expired and counted holds dropped per scope and admission, at most.
_PRUNE = 64


class CountersUnavailable(UnavailableError):
    """Redis did not answer: the gateway's fail mode decides."""


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation's answer: admitted, or refused by ``scopes[index]`` with its spend and
    what requests in flight hold (both in pico-dollars, rounded up to the nano-dollar)."""

    admitted: bool
    index: int = -1
    spent_pico: int = 0
    held_pico: int = 0


class BudgetCounters:
    """Reads enforced budgets' spend (cached ``max_age_s`` per scope) and holds reservations."""

    def __init__(self, client: aioredis.Redis, namespace: str, *, dedup_kind: str = "usage",
                 max_age_s: float = 1.0, hold_s: float = 600.0) -> None:
        self._client = client
        self._keys = StoreKeys(namespace)
        self._claims = self._keys.seen(dedup_kind)
        self._max_age_s = max_age_s
        self._hold_ms = int(hold_s * 1000)
        self._hold_ttl_s = self._hold_ms // 1000 + 60
        self._cache: dict[tuple[str, str], tuple[float, int]] = {}
        self._reading: dict[tuple[str, str], asyncio.Future[int]] = {}
        self._hold = client.register_script(_HOLD)
        self._settle = client.register_script(_SETTLE)

    def counter_key(self, scope: Scope) -> str:
        return self._keys.budget_spend(scope.counter_id, scope.period_start_ms)

    async def spends(self, scopes: Sequence[Scope]) -> list[int]:
        """Each scope's spend in pico-dollars, at most ``max_age_s`` old."""
        now = time.monotonic()
        wanted = [(self.counter_key(s), s.field) for s in scopes]
        stale = [key for key in dict.fromkeys(wanted)
                 if key not in self._reading
                 and (key not in self._cache or now - self._cache[key][0] > self._max_age_s)]
        if stale:
            await self._read(stale)
        waiting = [self._reading[key] for key in wanted if key in self._reading]
        if waiting:
            await asyncio.gather(*waiting)
        return [self._cache[key][1] for key in wanted]

    async def _read(self, keys: list[tuple[str, str]]) -> None:
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in keys}
        self._reading.update(futures)
        try:
            pipe = self._client.pipeline(transaction=False)
            for counter, field in keys:
                pipe.hget(counter, field)
            values = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            for future in futures.values():
                future.set_exception(CountersUnavailable(type(exc).__name__))
                future.exception()  # retrieved: each waiter raises its own
            raise CountersUnavailable(type(exc).__name__) from None
        finally:
            for key in keys:
                self._reading.pop(key, None)
        read_at = time.monotonic()
        for key, value in zip(keys, values, strict=True):
            self._cache[key] = (read_at, int(value) if value else 0)
            futures[key].set_result(0)

    def _holds_key(self, scope: Scope) -> str:
        return (f"{self._keys.prefix}:budget_held:{scope.counter_id}:{scope.period_start_ms}:"
                f"{scope.field}")

    async def hold(self, scopes: Sequence[Scope], event_id: str, bound_pico: int,
                   now_ms: int) -> Hold:
        """Admit the request and hold ``bound_pico`` in every scope, or refuse it."""
        keys: list[str] = []
        args: list[str | int] = [len(scopes), event_id, _nano_up(bound_pico),
                                 now_ms + self._hold_ms, now_ms, self._claims,
                                 self._hold_ttl_s, _PRUNE]
        for scope in scopes:
            keys += [self.counter_key(scope), self._holds_key(scope)]
            args += [scope.field, scope.budget.amount_pico // 1000]
        answer = await self._call(self._hold(keys=keys, args=args))
        if answer[0] == 1:
            return Hold(True)
        return Hold(False, int(answer[1]) - 1, int(answer[2]) * 1000, int(answer[3]) * 1000)

    async def settle(self, scopes: Sequence[Scope], event_id: str, cost_pico: int,
                     now_ms: int) -> None:
        """Hold the request's real cost instead of its bound until the pipeline counts it."""
        await self._call(self._settle(
            keys=[self._holds_key(s) for s in scopes],
            args=[event_id, _nano_up(cost_pico), now_ms + self._hold_ms, now_ms,
                  self._hold_ttl_s]))

    async def release(self, scopes: Sequence[Scope], event_id: str) -> None:
        """Drop the request's hold (it failed before costing anything)."""
        await self._call(self._settle(keys=[self._holds_key(s) for s in scopes],
                                      args=[event_id, "", 0, 0, self._hold_ttl_s]))

    async def _call(self, pending: object) -> list[bytes | int]:
        try:
            return await pending  # type: ignore[no-any-return, misc]
        except (TimeoutError, RedisError, OSError) as exc:
            raise CountersUnavailable(type(exc).__name__) from None


def _nano_up(pico: int) -> int:
    return -(-pico // 1000)
