"""Semantic cache: latency a miss and a hit add, and memory per entry, at 10,000 and 100,000
entries.

    python bench/cache.py [--sizes 10000,100000] [--requests 128]

Starts an embedded broker and Redis and a local upstream that answers at once. For each size,
Redis is filled with that many entries (random unit vectors, all in the partition the
requests use: the index's worst case, every entry a candidate) through the proxy's own
``EntryStore``, then ``costflux cache`` starts (rebuilding its index from Redis, timed) and
is sent ``--requests`` new prompts (misses: embedded, looked up, forwarded, stored) and then
the same prompts again (hits). Added latency = client round trip through the proxy minus the
round trip straight to the upstream (p50 and p99 of each). Memory per entry: the proxy's RSS
and Redis ``used_memory`` with the entries, minus without, over the entry count.
Writes bench/results/cache.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis
import redis.asyncio as aioredis
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from costflux.cache.policy import CachePolicy, Lookup, TokenUsage, classify  # noqa: E402
from costflux.cache.store import EntryStore, NewEntry  # noqa: E402
from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port  # noqa: E402
from tests.cache.upstream import Upstream  # noqa: E402

TEAM = "bench"
PROMPTS = ROOT / "tests" / "fixtures" / "paraphrases" / "msr_paraphrase_test_head.tsv"
WARM_UP = ["Write a haiku about autumn leaves.", "What is 17 times 23?",
           "Translate 'good morning' into Italian.", "List three uses of baking soda.",
           "Who painted the Mona Lisa?"]
RESPONSE = json.dumps({"id": "x", "object": "chat.completion", "model": "gpt-4",
                       "choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": "y" * 400}}],
                       "usage": {"prompt_tokens": 30, "completion_tokens": 100}}).encode()


def body(prompt: str) -> dict[str, Any]:
    return {"model": "gpt-4", "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}


def partition() -> str:
    decision = classify("chat", body("x"), {"team": TEAM}, CachePolicy())
    assert isinstance(decision, Lookup)
    return decision.partition


async def fill(redis_url: str, namespace: str, count: int) -> None:
    client = aioredis.Redis.from_url(redis_url)
    store = EntryStore(client, namespace, max_entries=count + 10_000, ttl_s=86_400)
    rng = np.random.default_rng(7)
    key = partition()
    now = time.time_ns() // 1_000_000

    async def put_some(vectors: np.ndarray) -> None:  # type: ignore[type-arg]
        for vector in vectors:
            await store.put(NewEntry(key, vector, None, vector.tobytes().hex()[:64], RESPONSE,
                                     "gpt-4",
                                     TokenUsage(30, 100)), now)

    vectors = rng.standard_normal((count, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    await asyncio.gather(*(put_some(chunk) for chunk in np.array_split(vectors, 32)))
    await client.aclose()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def start_proxy(bootstrap: str, redis_url: str, namespace: str, upstream: str,
                max_entries: int) -> tuple[subprocess.Popen[bytes], str, float]:
    port = free_port()
    env = {**os.environ, "COSTFLUX_KAFKA_BOOTSTRAP": bootstrap, "COSTFLUX_REDIS_URL": redis_url,
           "COSTFLUX_HTTP_PORT": str(port), "COSTFLUX_TOPIC_PARTITIONS": "1",
           "COSTFLUX_LOG_LEVEL": "warning", "COSTFLUX_CACHE_NAMESPACE": namespace}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "costflux", "cache", "--upstream", upstream,
         "--max-entries", str(max_entries)], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError("proxy exited")
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return process, url, time.monotonic() - started
        except requests.ConnectionError:
            time.sleep(0.1)


def timed(session: requests.Session, url: str, prompt: str) -> tuple[float, str]:
    started = time.perf_counter()
    response = session.post(f"{url}/v1/chat/completions", json=body(prompt), timeout=60,
                            headers={"Authorization": "Bearer sk-bench",
                                     "X-Costflux-Team": TEAM})
    elapsed = (time.perf_counter() - started) * 1000.0
    response.raise_for_status()
    return elapsed, response.headers.get("X-Costflux-Cache", "direct")


def quantiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 2),
            "p99": round(float(np.percentile(values, 99)), 2)}


def measure(size: int, requests_n: int, bootstrap: str, redis_url: str,
            upstream: Upstream) -> dict[str, Any]:
    namespace = f"bench:{size}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    empty_process, _, _ = start_proxy(bootstrap, redis_url, f"{namespace}:empty", upstream.url,
                                      size + 10_000)
    time.sleep(1.0)
    empty_rss = rss_bytes(empty_process.pid)
    empty_process.terminate()
    empty_process.wait()
    before = int(client.info("memory")["used_memory"])
    filled = time.monotonic()
    asyncio.run(fill(redis_url, namespace, size))
    fill_s = time.monotonic() - filled
    redis_bytes = int(client.info("memory")["used_memory"]) - before
    process, url, start_s = start_proxy(bootstrap, redis_url, namespace, upstream.url,
                                        size + 10_000)
    try:
        assert requests.get(f"{url}/healthz", timeout=5).json()["indexed"] == size
        time.sleep(1.0)
        proxy_rss = rss_bytes(process.pid)
        session = requests.Session()
        # Real, mutually unrelated sentences: the first sentence of each MRPC pair.
        prompts = [row.split("\t")[3] for row in
                   PROMPTS.read_text(encoding="utf-8").splitlines()[1:]][:requests_n]
        for prompt in WARM_UP:  # connections, thread pools, the producer's first sends
            timed(session, upstream.url, prompt)
            timed(session, url, prompt)
            timed(session, url, prompt)
        direct = [timed(session, upstream.url, p)[0] for p in prompts]
        misses = [timed(session, url, p) for p in prompts]
        hits = [timed(session, url, p) for p in prompts]
        # Another text with the same embedding (the model ignores surrounding spaces): the
        # semantic path, embedded and searched in the index, rather than the exact-text key.
        semantic = [timed(session, url, f" {p} ") for p in prompts]
        assert {kind for _, kind in misses} == {"miss"}, {kind for _, kind in misses}
        assert {kind for _, kind in hits} == {"hit"}, {kind for _, kind in hits}
        semantic_hits = sum(kind == "hit" for _, kind in semantic)
    finally:
        process.terminate()
        process.wait()
        client.close()
    direct_q = quantiles(direct)
    miss_q = quantiles([t for t, _ in misses])
    hit_q = quantiles([t for t, _ in hits])
    semantic_q = quantiles([t for t, kind in semantic if kind == "hit"])
    return {
        "entries": size, "requests": requests_n, "fill_s": round(fill_s, 1),
        "proxy_start_with_index_rebuild_s": round(start_s, 1),
        "direct_ms": direct_q, "miss_ms": miss_q, "hit_ms": hit_q,
        "miss_added_ms": {k: round(miss_q[k] - direct_q[k], 2) for k in miss_q},
        "hit_vs_direct_ms": {k: round(hit_q[k] - direct_q[k], 2) for k in hit_q},
        "semantic_hit_ms": semantic_q, "semantic_hits": semantic_hits,
        "proxy_rss_bytes_per_entry": round((proxy_rss - empty_rss) / size),
        "redis_bytes_per_entry": round(redis_bytes / size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--requests", type=int, default=128, help="at most 128")
    args = parser.parse_args()
    results = []
    with EmbeddedBroker() as broker, EmbeddedRedis() as server, Upstream() as upstream:
        for size in (int(s) for s in args.sizes.split(",")):
            result = measure(size, args.requests, broker.bootstrap, server.url, upstream)
            print(json.dumps(result), flush=True)
            results.append(result)
    print("\n| entries | miss: added p50 / p99 (ms) | hit, same text: p50 / p99 (ms) | "
          "hit, new text: p50 / p99 (ms) | upstream direct p50 / p99 (ms) | proxy RSS / entry | "
          "Redis / entry | index rebuild + start |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['entries']:,} | {r['miss_added_ms']['p50']} / {r['miss_added_ms']['p99']} | "
              f"{r['hit_ms']['p50']} / {r['hit_ms']['p99']} | "
              f"{r['semantic_hit_ms']['p50']} / {r['semantic_hit_ms']['p99']} "
              f"({r['semantic_hits']}/{r['requests']} found) | "
              f"{r['direct_ms']['p50']} / {r['direct_ms']['p99']} | "
              f"{r['proxy_rss_bytes_per_entry']:,} B | {r['redis_bytes_per_entry']:,} B | "
              f"{r['proxy_start_with_index_rebuild_s']} s |")
    out = ROOT / "bench" / "results" / "cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
