"""Redis memory per 100,000 active end users: the principals' daily roll-up and the budget
counters, written through the store's real flush path.

    python bench/principal_memory.py [--users 100000] [--api-keys 1000] [--events-per-user 2]

One UTC day of usage: every one of ``--users`` end users (UUID-shaped ids, as OpenAI's
``user`` / ``safety_identifier`` or Anthropic's ``metadata.user_id`` often are) sends
``--events-per-user`` requests through one of ``--api-keys`` keys (gateway key ids,
``key-`` + 16 hex), at times spread evenly over the day, in a few label combinations. The
events are ``costflux.core.ingest.Candidate`` rows, cut into flushes of ``--events-per-flush``
in time order and applied as ingest applies them (``streams.ingest``): ``USAGE.aggregate`` to
window rows, ``costflux.core.spend.add_spend_rows`` for the principals and the enforced
budgets' counters, ``costflux.streams.cost_store.CostStore.apply`` (the atomic Lua step, with the
dedup claims), all with the worker's default settings (1-minute and 1-hour windows, dedup
horizon, retention).

Three passes over the same events, each on an emptied Redis (append-only file on, as
production runs it):

- ``baseline``: no principals (``principal=("", "")``) and no budgets: the windows and the
  dedup claims alone.
- ``principals``: the events' api_key and end_user, and the gateway bench's two hard budgets
  (the team's, and ``api_key: "*"``).
- ``+ end_user budget``: also a hard ``end_user: "*"`` budget (a counter per end user).

Each pass reports ``INFO memory`` used_memory growth; the principals' cost per user is a
pass's growth minus the baseline's. ``MEMORY USAGE`` (exact, ``SAMPLES 0``) of the day's
``principals:end_user`` hash, of ``principals:api_key`` and of the budget counters gives the
same per key. Writes bench/results/principal_memory.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costflux.agents.app import serving_retention  # noqa: E402
from costflux.core.budgets import Budget, parse_budgets_text  # noqa: E402
from costflux.core.ingest import Candidate, IngestRules  # noqa: E402
from costflux.core.spend import SpendRules, add_spend_rows  # noqa: E402
from costflux.embedded import EmbeddedRedis  # noqa: E402
from costflux.settings import Settings  # noqa: E402
from costflux.streams.cost_store import CostStore, FlushWrite, Outcome, SourceState  # noqa: E402
from costflux.streams.ingest import USAGE  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
NAMESPACE = "bench-pm"
DAY_MS = 86_400_000
DAY_START_MS = 1_796_515_200_000  # 2026-12-06T00:00:00Z
MIB = 1024 * 1024
BUDGETS = """
budgets:
  - {name: team-a, scope: {team: team-0}, period: daily, amount: 1000000, enforce: hard}
  - {name: per-key, scope: {api_key: "*"}, period: daily, amount: 100000, enforce: hard}
  - {name: per-user, scope: {end_user: "*"}, period: daily, amount: 100, enforce: hard}
"""
PASSES = ("baseline", "principals", "+ end_user budget")


def day_of_events(users: int, keys: int, per_user: int, seed: int) -> list[Candidate]:
    """Every user's requests, in time order over one UTC day."""
    rng = random.Random(seed)
    user_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(users)]
    key_ids = [f"key-{rng.getrandbits(64):016x}" for _ in range(keys)]
    senders = [user for user in range(users) for _ in range(per_user)]
    rng.shuffle(senders)
    step_ms = DAY_MS / len(senders)
    events = []
    for index, user in enumerate(senders):
        key = user % keys
        dims = (f"model-{index % 3}", f"team-{key % 10}", f"project-{key % 20}",
                f"app-{key % 5}", "prod", "", "us-east-1")
        input_tokens, output_tokens = rng.randrange(50, 2000), rng.randrange(10, 800)
        events.append(Candidate(
            f"ev-{index}", str(index), DAY_START_MS + int(index * step_ms), dims,
            input_tokens * 1_000_000 + output_tokens * 3_000_000, input_tokens, output_tokens,
            0, 0, 0, None, None, (key_ids[key], user_ids[user])))
    return events


def without_principals(events: list[Candidate]) -> list[Candidate]:
    return [event._replace(principal=("", "")) for event in events]


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def apply_day(client: redis.Redis, settings: Settings, events: list[Candidate],
              enforced: tuple[Budget, ...], per_flush: int) -> tuple[int, float]:
    """Apply ``events`` as ingest does; the flushes applied and the seconds it took."""
    rules = IngestRules(tuple(settings.window_sizes), settings.allowed_lateness_s * 1000,
                        settings.max_future_s * 1000)
    store = CostStore(client, NAMESPACE, dedup_kind=USAGE.name,
                      dedup_horizon_s=settings.dedup_horizon_s,
                      retention_s=serving_retention(settings),
                      finest_window_s=min(settings.window_sizes),
                      window_max_rows=settings.window_max_rows,
                      principal_retention_s=settings.principal_retention_days * 86_400)
    spend = SpendRules(enforced)
    state = SourceState()
    flushes = 0
    started = time.perf_counter()
    for first in range(0, len(events), per_flush):
        counted = events[first:first + per_flush]
        rows = USAGE.aggregate(counted, rules).rows(rules.window_sizes_s)
        add_spend_rows(rows, counted, spend)
        after = SourceState(first + len(counted), counted[-1].ts_ms, "bench")
        result = store.apply(FlushWrite("usage:0", state, after, [c.event_id for c in counted],
                                        (), rows, DAY_START_MS + DAY_MS))
        if result.outcome is not Outcome.APPLIED:
            raise RuntimeError(f"flush at {first}: {result}")
        state = after
        flushes += 1
    return flushes, time.perf_counter() - started


def key_bytes(client: redis.Redis, pattern: str) -> tuple[int, int, list[str]]:
    """Exact MEMORY USAGE and field count of the keys matching ``pattern``, and their
    encodings."""
    total, fields = 0, 0
    encodings: list[str] = []
    for key in client.scan_iter(match=pattern, count=1000):
        total += client.memory_usage(key, samples=0) or 0
        fields += client.hlen(key)
        encodings.append(text(client.object("encoding", key)))
    return total, fields, encodings


def measure(client: redis.Redis, settings: Settings, name: str, events: list[Candidate],
            enforced: tuple[Budget, ...], per_flush: int) -> dict[str, Any]:
    client.flushall()
    time.sleep(0.2)
    before = used_memory(client)
    flushes, apply_s = apply_day(client, settings, events, enforced, per_flush)
    grown = used_memory(client) - before
    prefix = f"{NAMESPACE}:v2"
    result: dict[str, Any] = {"pass": name, "flushes": flushes, "apply_s": round(apply_s, 1),
                              "used_memory_growth": grown}
    for label, pattern in (("end_user_day_hash", f"{prefix}:principals:end_user:*"),
                           ("api_key_day_hash", f"{prefix}:principals:api_key:*"),
                           ("budget_counters", f"{prefix}:budget_spend:*"),
                           ("windows", f"{prefix}:usage:*")):
        total, fields, encodings = key_bytes(client, pattern)
        result[label] = {"bytes": total, "fields": fields,
                         "encodings": sorted(set(encodings))}
    dedup = [key for _, key in zip(range(1000), client.scan_iter(
        match=f"{prefix}:seen:*", count=1000), strict=False)]
    result["dedup_key_bytes_sampled"] = round(
        sum(client.memory_usage(key, samples=0) or 0 for key in dedup) / max(len(dedup), 1))
    sample = client.hrandfield(f"{prefix}:principals:end_user:{DAY_START_MS}", 1, True)
    if sample:
        result["end_user_field_example"] = [text(part) for part in sample]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--api-keys", type=int, default=1000)
    parser.add_argument("--events-per-user", type=int, default=2)
    parser.add_argument("--events-per-flush", type=int, default=2500)
    args = parser.parse_args()
    settings = Settings()
    budgets = parse_budgets_text(BUDGETS)
    events = day_of_events(args.users, args.api_keys, args.events_per_user, seed=1)
    plans = (
        (PASSES[0], without_principals(events), ()),
        (PASSES[1], events, tuple(budgets[:2])),
        (PASSES[2], events, tuple(budgets)),
    )
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        client.script_load("return 1")  # the script cache exists before the first pass
        passes = [measure(client, settings, name, day, enforced, args.events_per_flush)
                  for name, day, enforced in plans]
        version = client.info("server")["redis_version"]
        client.close()
    report(args, passes, version)


def report(args: argparse.Namespace, passes: list[dict[str, Any]], version: str) -> None:
    users, keys = args.users, args.api_keys
    base = passes[0]["used_memory_growth"]
    per_100k = 100_000 / users
    print(f"\n{users:,} end users x {args.events_per_user} requests over one UTC day, "
          f"{keys:,} API keys, flushes of {args.events_per_flush}; Redis {version}, "
          "append-only file on, worker default settings.\n")
    print("| pass | used_memory growth | minus baseline | per end user | per 100k users |"
          " end_user day hash (MEMORY USAGE) | api_key day hash | budget counters |")
    print("|---|---|---|---|---|---|---|---|")
    for result in passes:
        extra = result["used_memory_growth"] - base
        user_hash = result["end_user_day_hash"]
        key_hash = result["api_key_day_hash"]
        counters = result["budget_counters"]
        result["minus_baseline_bytes"] = extra
        result["bytes_per_user_minus_baseline"] = extra / users
        print(f"| {result['pass']} | {result['used_memory_growth'] / MIB:.1f} MiB | "
              f"{extra / MIB:.1f} MiB | {extra / users:.0f} B | "
              f"{extra * per_100k / MIB:.1f} MiB | "
              f"{user_hash['bytes'] / MIB:.2f} MiB, {user_hash['fields']:,} fields "
              f"({user_hash['bytes'] / max(user_hash['fields'], 1):.0f} B each) | "
              f"{key_hash['bytes'] / 1024:.0f} KiB, {key_hash['fields']:,} fields "
              f"({key_hash['bytes'] / max(key_hash['fields'], 1):.0f} B each) | "
              f"{counters['bytes'] / MIB:.2f} MiB, {counters['fields']:,} fields |")
    full = passes[1]
    user_hash = full["end_user_day_hash"]
    print(f"\nPer active end user per day: {full['bytes_per_user_minus_baseline']:.0f} B of "
          f"used_memory ({user_hash['bytes'] / users:.0f} B of it the end_user day hash, "
          f"encoding {', '.join(user_hash['encodings'])}; a field is "
          f"{full.get('end_user_field_example')}).")
    if len(passes) > 2:
        budget_extra = passes[2]["used_memory_growth"] - full["used_memory_growth"]
        print(f"An end_user \"*\" budget adds {budget_extra / users:.0f} B per user "
              f"({budget_extra * per_100k / MIB:.1f} MiB per 100k) for its period.")
    retention = Settings().principal_retention_days
    print(f"Kept {retention} days (principal_retention_days): with the same number of "
          f"distinct users active each day, {retention} day hashes: "
          f"{full['bytes_per_user_minus_baseline'] * 100_000 * retention / MIB:,.0f} "
          "MiB per 100k daily-active users.")
    print(f"Baseline (windows + dedup claims, in every pass): {base / MIB:.1f} MiB; a dedup "
          f"claim ~{passes[0]['dedup_key_bytes_sampled']} B (kept for the dedup horizon).")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "principal_memory.json").write_text(json.dumps(
        {"users": users, "api_keys": keys, "events_per_user": args.events_per_user,
         "redis_version": version, "passes": passes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
