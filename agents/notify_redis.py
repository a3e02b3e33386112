"""Redis state shared by all notifier instances: who posts an alert, and when.

**Claims.** Each notice (alert_id, state, repeat) has one key, ``<ns>:notify:<id>:<state>:<n>``:

- ``claimed:<instance>``, with a lease (TTL): that instance is posting it now; it renews the
  lease while it waits, so a long ``Retry-After`` does not let another instance in;
- ``delivered`` or ``rejected`` (35 days, longer than any replay): done, skip it.

A gave-up delivery deletes its claim, so a later replay of the alert may try again.

**Rate.** One key per webhook, ``<ns>:notify-slot:<sha256(url)[:16]>`` (never the URL: it is
the credential), holds the next free posting time in Redis ``TIME`` microseconds. A reservation
takes ``max(now, next)`` and moves ``next`` one interval on, all in one script, so instances on
different hosts share one schedule without trusting each other's clocks.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from typing import Literal

import redis

__all__ = ["ClaimLedger", "SlotLimiter", "Verdict", "claim_key", "slot_key", "verdict"]

DONE = ("delivered", "rejected")
DONE_TTL_S = 35 * 86400

# SET NX with the lease, else the value that is there: one round trip, and no gap between a
# failed SET and a GET in which the key could expire and read as "nobody".
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return ARGV[1] end
return redis.call('GET', KEYS[1])
"""
# Compare-and-act: only the holder of the claim may extend or drop it.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# ARGV: interval_us, earliest (us from now). Returns the microseconds until the slot taken.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = math.max(now + tonumber(ARGV[2]), tonumber(redis.call('GET', KEYS[1]) or '0'))
local after = slot + tonumber(ARGV[1])
local ttl_ms = math.floor((after - now) / 1000) + 60000
redis.call('SET', KEYS[1], string.format('%d', after), 'PX', ttl_ms)
return slot - now
"""


class Verdict(Enum):
    POST = "post"  # the claim is ours
    SKIP = "skip"  # delivered or rejected already
    WAIT = "wait"  # another instance holds a live claim


def claim_key(namespace: str, alert_id: str, state: str, repeat: int) -> str:
    """
    >>> claim_key("costflux", "ab12", "firing", 0)
    'costflux:notify:ab12:firing:0'
    """
    return f"{namespace}:notify:{alert_id}:{state}:{repeat}"


def slot_key(namespace: str, url: str) -> str:
    """The rate key of one webhook: a short hash, so the URL never lands in Redis."""
    return f"{namespace}:notify-slot:{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def verdict(value: str | None, mine: str) -> Verdict:
    """What to do about a notice whose claim key holds ``value``.

    >>> verdict("claimed:a", "claimed:a"), verdict("delivered", "claimed:a")
    (<Verdict.POST: 'post'>, <Verdict.SKIP: 'skip'>)
    >>> verdict("claimed:b", "claimed:a")
    <Verdict.WAIT: 'wait'>
    """
    if value == mine:
        return Verdict.POST
    if value in DONE:
        return Verdict.SKIP
    return Verdict.WAIT  # another's claim (or None: it just expired; claim again)


class ClaimLedger:
    """Claims on notices for one instance (``claimed:<instance>``) with a lease."""

    def __init__(self, client: redis.Redis, instance: str, lease_s: float) -> None:
        self.mine = f"claimed:{instance}"
        self._client = client
        self._lease_ms = max(1, int(lease_s * 1000))
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def claim(self, key: str) -> Verdict:
        value = self._claim(keys=[key], args=[self.mine, self._lease_ms])
        return verdict(value.decode() if isinstance(value, bytes) else value, self.mine)

    def renew(self, key: str) -> bool:
        """Extend our lease; False when the claim is no longer ours."""
        return bool(self._renew(keys=[key], args=[self.mine, self._lease_ms]))

    def finish(self, key: str, outcome: Literal["delivered", "rejected"]) -> None:
        """Record ``delivered`` or ``rejected`` for as long as a replay could bring it back."""
        self._client.set(key, outcome, ex=DONE_TTL_S)

    def release(self, key: str) -> None:
        """Drop our claim (gave up, or stopping) so the notice can be tried again."""
        self._release(keys=[key], args=[self.mine])


class SlotLimiter:
    """At most one post per ``interval_s`` to one webhook, across every instance."""

    def __init__(self, client: redis.Redis, key: str, interval_s: float) -> None:
        self._key = key
        self._interval_us = int(interval_s * 1e6)
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, earliest_s: float = 0.0) -> float:
        """Take the next slot no sooner than ``earliest_s`` from now; return seconds to it."""
        waited = self._reserve(keys=[self._key], args=[self._interval_us, int(earliest_s * 1e6)])
        return max(0.0, int(waited) / 1e6)
