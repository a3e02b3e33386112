"""What one Redis primary holds as the cost store: flushes and events per second of its CPU,
and bytes per window row.

    python bench/store.py [--flushes N] [--events-per-flush E] [--combinations C]

Starts an embedded Redis (append-only file, fsync every second, as production runs it) and
applies N flushes through ``costflux.streams.cost_store.CostStore`` from one client thread, as one
ingest loop would: each flush carries E event ids to claim and the rows of E events of C label
combinations spread over the minute windows they fall in (and their hour). The figure that
matters is Redis's own CPU per flush (from /proc), since the store is one primary: E / that is
the event rate one Redis core holds. Then it reads every window row's ``MEMORY USAGE`` share.
Writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import redis
from procs import cpu_seconds

from costflux.core.aggregate import PartitionAggregate
from costflux.core.ingest import Candidate
from costflux.embedded import EmbeddedRedis
from costflux.streams.cost_store import CostStore, FlushWrite, SourceState

RESULTS = Path(__file__).resolve().parent / "results"
START_MS = 1_700_000_000_000
DAY_S = 86_400


def candidates(first: int, count: int, combinations: int,
               rng: random.Random) -> list[Candidate]:
    """``costflux.core.ingest.Candidate`` rows: 5 ms apart, one of C label combinations each,
    no principals (bench/principal_memory.py measures those)."""
    out = []
    for index in range(first, first + count):
        combo = rng.randrange(combinations)
        dims = (f"model-{combo % 3}", f"team-{combo % 7}", f"project-{combo % 11}",
                f"app-{combo}", "prod", "", "us-east-1")
        out.append(Candidate(f"ev-{index}", str(index), START_MS + index * 5, dims,
                             rng.randrange(10**9), 100, 20, 0, 0, 0, None, None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flushes", type=int, default=400)
    parser.add_argument("--events-per-flush", type=int, default=2500)
    parser.add_argument("--combinations", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(1)
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        store = CostStore(client, "bench", dedup_kind="usage", dedup_horizon_s=3600,
                          retention_s=lambda size_s: 62 * DAY_S, finest_window_s=60,
                          window_max_rows=32_000)
        flushes = []
        for number in range(args.flushes):
            batch = candidates(number * args.events_per_flush, args.events_per_flush,
                               args.combinations, rng)
            totals = PartitionAggregate(60)
            totals.add_all(batch)
            flushes.append((batch, totals.rows((60, 3600))))
        rows_per_flush = sum(len(r) for _, rows in flushes for r in rows.usage.values())
        state = SourceState()
        redis_cpu = cpu_seconds(server.pid) or 0.0
        started = time.perf_counter()
        for number, (batch, rows) in enumerate(flushes):
            after = SourceState((number + 1) * 10, START_MS, "bench")
            store.apply(FlushWrite("usage:0", state, after, [c[0] for c in batch], (), rows, 0))
            state = after
        wall = time.perf_counter() - started
        redis_cpu = (cpu_seconds(server.pid) or 0.0) - redis_cpu
        events = args.flushes * args.events_per_flush
        window_rows, row_bytes = 0, 0
        for key in client.scan_iter(match="bench:v2:usage:*"):
            window_rows += client.hlen(key)
            row_bytes += client.memory_usage(key, samples=0) or 0
        dedup_bytes = sum(client.memory_usage(key) or 0
                          for key in client.scan_iter(match="bench:v2:seen:*", count=1000))
        result = {
            "flushes": args.flushes, "events_per_flush": args.events_per_flush,
            "rows_per_flush": rows_per_flush / args.flushes,
            "wall_s": round(wall, 2), "redis_cpu_s": round(redis_cpu, 2),
            # /proc counts CPU in clock ticks (10 ms): a very short run can measure none.
            "events_per_redis_cpu_s": round(events / redis_cpu) if redis_cpu else None,
            "flushes_per_redis_cpu_s": (round(args.flushes / redis_cpu, 1)
                                        if redis_cpu else None),
            "redis_cpu_us_per_event": round(redis_cpu / events * 1e6, 2),
            "events_per_s_one_client": round(events / wall),
            "window_rows": window_rows,
            "bytes_per_window_row": round(row_bytes / max(window_rows, 1)),
            "bytes_per_dedup_id": round(dedup_bytes / events),
        }
        client.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store.json").write_text(json.dumps(result, indent=2))
    for name, value in result.items():
        print(f"{name:>24}: {value}")


if __name__ == "__main__":
    main()
