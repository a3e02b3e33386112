"""The latency the gateway adds, with budget enforcement on and off, and the requests per
second one replica sustains.

    python bench/gateway.py [--requests 2000] [--clients 32] [--seconds 3] [--profile]

Starts an embedded Redis, a local OpenAI-shaped upstream (aiohttp, one fixed chat completion
with usage, answered at once) and one ``costflux.gateway.proxy.Gateway`` process per mode,
each an aiohttp server on its own port, as ``costflux`` would run it (default event loop, no
access log). The modes:

- ``direct``: the upstream itself, no gateway (the baseline of "added").
- ``off``: ``Gateway(..., guard=None)``: enforcement off.
- ``on``: a ``BudgetGuard`` over real Redis counters (``costflux.streams.budget_counters``) with two
  hard budgets that scope every request: one for the team (the keys file gives the key its
  team) and one per API key (``api_key: "*"``). One key sends everything, so both counters are
  read from Redis at most once a second (``BudgetCounters``' cache).
- ``on-keys``: the same guard, each request from another key of a 10,000-key keys file: the
  per-key counter is read from Redis on every request (the team's stays cached).
- ``reserve``: the same budgets in reservation mode (``GuardConfig(reservation=True)``): a hold
  (one Lua step) before and a settle (another) after every request. A stand-in for the
  pipeline claims each event id ``--pipeline-lag`` seconds after its event is published, so
  holds leave the holds hash as they would in production (the hold script reads every hold of
  a scope on each admission).

Usage events go to a no-op publish (a bounded deque's append): Kafka's produce is outside
the measurement. Sequential latency: ``--requests`` requests per mode from one client with a
kept-alive connection, after ``--warmup``, sent in rounds that alternate the modes (so drift
on a shared machine hits every mode alike). Added latency = the mode's p50 (p99) minus
direct's. Throughput: ``--clients`` concurrent clients (one aiohttp session, one process) for
``--seconds``, ``--rounds`` times per mode, the best round shown; with it each process's CPU
per request, from /proc: on a small machine where the client, the upstream, Redis and the
gateway share the cores, "requests per gateway CPU-second" is the rate one replica sustains
on a core of its own. Every answer must be 200, and each guarded gateway's
``costflux_gateway_budget_check_seconds_count`` must equal the requests it was sent.

``--profile``: afterwards, one more ``on`` gateway under cProfile takes ``--requests``
sequential requests; the top functions by own time are printed and the stats written to
bench/results/gateway-on.pstats. Writes bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import os
import pstats
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import redis
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from procs import cpu_seconds  # noqa: E402

from costflux.embedded import EmbeddedRedis, free_port  # noqa: E402

RESULTS = BENCH / "results"
NAMESPACE = "bench-gw"
TEAM = "bench"
MODEL = "gpt-4"  # priced in the bundled pricing.yaml (reservation needs a price)
KEYS = 10_000
MODES = ("direct", "off", "on", "on-keys", "reserve")
GUARDED = ("on", "on-keys", "reserve")
LABELS = {
    "direct": "upstream directly",
    "off": "gateway, enforcement off",
    "on": "gateway, enforcement on (counters cached)",
    "on-keys": "gateway, on, new key each request",
    "reserve": "gateway, on, reservation mode",
}
BUDGETS = f"""
budgets:
  - {{name: team-bench, scope: {{team: {TEAM}}}, period: daily, amount: 1000000, enforce: hard}}
  - {{name: per-key, scope: {{api_key: "*"}}, period: daily, amount: 100000, enforce: hard}}
"""
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
    "model": "gpt-4-0613",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "The answer is 42. " * 8}}],
    "usage": {"prompt_tokens": 31, "completion_tokens": 48, "total_tokens": 79,
              "prompt_tokens_details": {"cached_tokens": 0}},
}).encode()
BODY = json.dumps({
    "model": MODEL, "user": "end-user-0001", "temperature": 0.2,
    "messages": [{"role": "system", "content": "You are a helpful assistant."},
                 {"role": "user", "content": "What is six times seven? Answer briefly."}],
}).encode()


def api_key(number: int) -> str:
    return f"sk-bench-{number:06d}-0123456789abcdef"


# --- the servers (child processes) -------------------------------------------------------


def upstream_app() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    app.router.add_get("/healthz", healthz)
    return app


def gateway_app(mode: str, upstream: str, redis_url: str, lag_s: float) -> web.Application:
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry, generate_latest

    from costflux.core.budgets import parse_budgets_text
    from costflux.gateway.guard import BudgetGuard, GuardConfig
    from costflux.gateway.identity import KeyEntry, key_id
    from costflux.gateway.proxy import Gateway, ProxyConfig
    from costflux.pricing_source import PricingSource
    from costflux.streams.budget_counters import BudgetCounters
    from costflux.streams.cost_store import StoreKeys

    published: collections.deque[tuple[float, str]] = collections.deque(maxlen=100_000)

    def publish(event: dict[str, Any]) -> None:  # Kafka's produce is not measured
        published.append((time.monotonic(), event["event_id"]))

    config = ProxyConfig(upstream=upstream)
    if mode == "off":
        return Gateway(config, publish).app()
    registry = CollectorRegistry()
    budgets = parse_budgets_text(BUDGETS)
    keys = {key_id(api_key(n)): KeyEntry(f"bench-{n}", {"team": TEAM}) for n in range(KEYS)}
    prices = PricingSource(None).current()
    client = aioredis.Redis.from_url(redis_url)
    guard = BudgetGuard(lambda: budgets, lambda: keys, BudgetCounters(client, NAMESPACE),
                        lambda: prices, GuardConfig(reservation=mode == "reserve"), registry)
    app = Gateway(config, publish, guard=guard, metrics=lambda: generate_latest(registry)).app()

    async def claim_forever() -> None:
        """The pipeline's stand-in: claim each event id ``lag_s`` after it was published (the
        store step's dedup claim, which is what drops a hold)."""
        prefix = StoreKeys(NAMESPACE).seen("usage")
        while True:
            await asyncio.sleep(0.25)
            due = time.monotonic() - lag_s
            ids = []
            while published and published[0][0] <= due:
                ids.append(published.popleft()[1])
            if ids:
                pipe = client.pipeline(transaction=False)
                for event_id in ids:
                    pipe.set(prefix + event_id, "1", ex=3600)
                await pipe.execute()

    async def start_claims(app: web.Application) -> None:
        if mode == "reserve":
            app["claims"] = asyncio.create_task(claim_forever())

    async def close(app: web.Application) -> None:
        if "claims" in app:
            app["claims"].cancel()
        await client.aclose()

    app.on_startup.append(start_claims)
    app.on_cleanup.append(close)
    return app


def serve(mode: str, port: int, upstream: str, redis_url: str, lag_s: float,
          profile: str | None) -> None:
    profiler = cProfile.Profile() if profile else None

    async def run() -> None:
        app = upstream_app() if mode == "upstream" else gateway_app(mode, upstream, redis_url,
                                                                    lag_s)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        if profiler is not None:
            profiler.enable()
        await stop.wait()
        if profiler is not None:
            profiler.disable()
        await runner.cleanup()

    asyncio.run(run())
    if profiler is not None and profile:
        profiler.dump_stats(profile)


# --- the orchestrator ---------------------------------------------------------------------


class Server:
    def __init__(self, mode: str, upstream: str, redis_url: str, lag_s: float,
                 profile: Path | None = None) -> None:
        self.mode = mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, __file__, "--serve", mode, "--port", str(self.port),
                "--upstream", upstream, "--redis-url", redis_url, "--pipeline-lag", str(lag_s)]
        if profile is not None:
            argv += ["--profile-to", str(profile)]
        self.process = subprocess.Popen(argv, cwd=ROOT)
        self.sent = 0

    def wait_ready(self, session_get: Callable[[str], bool]) -> None:
        deadline = time.monotonic() + 30
        while not session_get(f"{self.url}/healthz"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.mode} server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200  # loopback
    except httpx.HTTPError:
        return False


def headers_for(mode: str) -> Iterator[dict[str, str]]:
    """Each request's headers: one key, or (on-keys) the next of the keys file's keys."""
    number = 0
    while True:
        if mode == "on-keys":
            number = (number + 1) % KEYS
        yield {"Authorization": f"Bearer {api_key(number)}",
               "Content-Type": "application/json"}


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    async with session.post(url, data=BODY, headers=headers) as answer:
        await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{url}: {answer.status} {await answer.text()}")
    return (time.perf_counter() - started) * 1000.0


async def sequential(servers: dict[str, Server], requests: int, warmup: int,
                     rounds: int) -> dict[str, list[float]]:
    """``requests`` per mode, one at a time, in ``rounds`` rounds that rotate the modes."""
    sessions = {mode: aiohttp.ClientSession() for mode in servers}
    headers = {mode: headers_for(mode) for mode in servers}
    urls = {mode: f"{s.url}/v1/chat/completions" for mode, s in servers.items()}
    latencies: dict[str, list[float]] = {mode: [] for mode in servers}
    try:
        for mode in servers:
            for _ in range(warmup):
                await one(sessions[mode], urls[mode], next(headers[mode]))
            servers[mode].sent += warmup
        order = list(servers)
        per_round = requests // rounds
        for number in range(rounds):
            for mode in order[number % len(order):] + order[:number % len(order)]:
                for _ in range(per_round):
                    latencies[mode].append(
                        await one(sessions[mode], urls[mode], next(headers[mode])))
                servers[mode].sent += per_round
    finally:
        for session in sessions.values():
            await session.close()
    return latencies


async def load(server: Server, clients: int, seconds: float) -> int:
    """Requests answered by ``clients`` concurrent clients in ``seconds``."""
    url = f"{server.url}/v1/chat/completions"
    headers = headers_for(server.mode)
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await one(session, url, next(headers))
                done += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    server.sent += done
    return done


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def throughput(servers: dict[str, Server], upstream: Server, redis_pid: int | None,
               clients: int, seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for mode, server in servers.items():
            asyncio.run(load(server, clients, 0.3))  # connections and the loop warm
            pids = {"gateway": server.process.pid if mode != "direct" else None,
                    "upstream": upstream.process.pid, "redis": redis_pid,
                    "client": os.getpid()}
            before = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
            started = time.perf_counter()
            done = asyncio.run(load(server, clients, seconds))
            wall = time.perf_counter() - started
            cpu = {name: (cpu_seconds(pid) or 0.0) - before[name] for name, pid in pids.items()}
            result = {"requests_per_s": done / wall, "requests": done,
                      **{f"{name}_cpu_us_per_request": cpu[name] / done * 1e6 for name in cpu}}
            if mode != "direct":
                result["requests_per_gateway_cpu_s"] = done / cpu["gateway"]
            if mode not in best or result["requests_per_s"] > best[mode]["requests_per_s"]:
                best[mode] = result
    return best


def checks_done(server: Server) -> int:
    text = httpx.get(f"{server.url}/metrics", timeout=5).raise_for_status().text
    for line in text.splitlines():
        if line.startswith("costflux_gateway_budget_check_seconds_count"):
            return int(float(line.split()[-1]))
    return 0


def profile_on(upstream: str, redis_url: str, requests: int, lag_s: float) -> list[str]:
    """Run ``requests`` sequential requests through an ``on`` gateway under cProfile."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "gateway-on.pstats"
    server = Server("on", upstream, redis_url, lag_s, profile=path)
    try:
        server.wait_ready(healthy)
        asyncio.run(sequential({"on": server}, requests, 0, 1))
    finally:
        server.stop()
    stats = pstats.Stats(str(path))
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    entries = stats.stats  # type: ignore[attr-defined]
    # The profiler's clock is the wall clock: the loop's idle wait in epoll is not work.
    idle = sum(own for (_, _, name), (_, _, own, _, _) in entries.items()
               if name == "<method 'poll' of 'select.epoll' objects>")
    busy = sum(own for _, _, own, _, _ in entries.values()) - idle

    def where(file: str, line: int, name: str) -> str:
        return f"{name} ({file.replace(str(ROOT) + '/', '').replace(sys.prefix + '/', '')}:{line})"

    lines = [f"cProfile of the 'on' gateway, {requests} sequential requests: "
             f"{busy / requests * 1e6:.0f} us busy per request (inflated by the profiler; "
             f"epoll's idle wait left out). Top by own time:",
             f"{'own us/req':>10} {'cum us/req':>10} {'calls':>7}  function"]
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)
    for (file, line, name), (_, calls, own, cumulative, _) in [
            e for e in ranked if e[0][2] != "<method 'poll' of 'select.epoll' objects>"][:15]:
        lines.append(f"{own / requests * 1e6:10.1f} {cumulative / requests * 1e6:10.1f} "
                     f"{calls:7d}  {where(file, line, name)}")
    lines += ["costflux's own functions by cumulative time (coroutines' 'calls' count resumes):",
              f"{'own us/req':>10} {'cum us/req':>10} {'calls':>7}  function"]
    ours = [e for e in entries.items()
            if e[0][0].startswith((str(ROOT / "costflux"), str(ROOT / "streams")))]
    for (file, line, name), (_, calls, own, cumulative, _) in sorted(
            ours, key=lambda item: item[1][3], reverse=True)[:20]:
        lines.append(f"{own / requests * 1e6:10.1f} {cumulative / requests * 1e6:10.1f} "
                     f"{calls:7d}  {where(file, line, name)}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential, per mode")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4, help="sequential rounds")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput round")
    parser.add_argument("--load-rounds", type=int, default=2)
    parser.add_argument("--pipeline-lag", type=float, default=1.0,
                        help="reserve: seconds from an event's publish to its claim")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--profile", action="store_true")
    # The child processes' own arguments.
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.upstream, args.redis_url, args.pipeline_lag,
              args.profile_to)
        return
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; known: {', '.join(MODES)}")
    started = time.monotonic()
    with EmbeddedRedis() as store:
        upstream = Server("upstream", "", "", 0.0)
        servers: dict[str, Server] = {}
        try:
            upstream.wait_ready(healthy)
            servers = {mode: upstream if mode == "direct" else
                        Server(mode, upstream.url, store.url, args.pipeline_lag)
                        for mode in modes}
            for server in servers.values():
                server.wait_ready(healthy)
            latencies = asyncio.run(sequential(servers, args.requests, args.warmup,
                                               args.rounds))
            loads = throughput(servers, upstream, store.pid, args.clients, args.seconds,
                               args.load_rounds)
            checks = {mode: (checks_done(servers[mode]), servers[mode].sent)
                      for mode in modes if mode in GUARDED}
            client = redis.Redis.from_url(store.url)
            holds = {key.decode(): client.hlen(key)
                     for key in client.scan_iter(match=f"{NAMESPACE}:*budget_held:*", _type="hash")}
            client.close()
        finally:
            for server in servers.values():
                if server is not upstream:
                    server.stop()
            upstream.stop()
        profile = (profile_on_fresh(store.url, args.requests, args.pipeline_lag)
                   if args.profile else [])
    for mode, (checked, sent) in checks.items():
        if checked != sent:
            raise SystemExit(f"{mode}: the guard checked {checked} requests of {sent} sent")
    report(args, modes, latencies, loads, checks, holds, profile, time.monotonic() - started)


def profile_on_fresh(redis_url: str, requests: int, lag_s: float) -> list[str]:
    upstream = Server("upstream", "", "", 0.0)
    try:
        upstream.wait_ready(healthy)
        return profile_on(upstream.url, redis_url, requests, lag_s)
    finally:
        upstream.stop()


def report(args: argparse.Namespace, modes: list[str], latencies: dict[str, list[float]],
           loads: dict[str, dict[str, float]], checks: dict[str, tuple[int, int]],
           holds: dict[str, int], profile: list[str], wall_s: float) -> None:
    quantiles = {mode: {"p50": percentile(values, 50), "p99": percentile(values, 99)}
                 for mode, values in latencies.items()}
    base = quantiles.get("direct")
    result: dict[str, Any] = {
        "requests": args.requests, "clients": args.clients, "cpus": os.cpu_count(),
        "latency_ms": quantiles, "throughput": loads, "guard_checks": checks,
        "holds_left": holds, "wall_s": round(wall_s, 1),
    }
    print(f"\n{args.requests} sequential requests per mode (after {args.warmup} warm-up), "
          f"{args.clients} concurrent clients for {args.seconds:g} s x {args.load_rounds} "
          f"(best shown); {os.cpu_count()} CPUs shared by client, upstream, Redis, gateway.")
    print("Usage events go to a no-op publish: Kafka's produce is not measured.\n")
    print("| mode | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s | "
          "gateway CPU us/req | req per gateway CPU-s | Redis CPU us/req |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        q, tp = quantiles[mode], loads[mode]
        added = ("-", "-") if base is None or mode == "direct" else (
            f"{q['p50'] - base['p50']:.3f}", f"{q['p99'] - base['p99']:.3f}")
        gateway_cpu = ("-" if mode == "direct" else
                       f"{tp['gateway_cpu_us_per_request']:.0f}")
        per_core = ("-" if mode == "direct" else f"{tp['requests_per_gateway_cpu_s']:,.0f}")
        print(f"| {LABELS[mode]} | {q['p50']:.3f} | {q['p99']:.3f} | {added[0]} | {added[1]} | "
              f"{tp['requests_per_s']:,.0f} | {gateway_cpu} | {per_core} | "
              f"{tp['redis_cpu_us_per_request']:.1f} |")
    if "on" in quantiles and "off" in quantiles:
        print()
        for mode in ("on", "on-keys", "reserve"):
            if mode not in quantiles:
                continue
            p50 = quantiles[mode]["p50"] - quantiles["off"]["p50"]
            p99 = quantiles[mode]["p99"] - quantiles["off"]["p99"]
            cpu = (loads[mode]["gateway_cpu_us_per_request"]
                   - loads["off"]["gateway_cpu_us_per_request"])
            verdict = "within" if p50 <= 2.0 else "OVER"
            result[f"{mode}_vs_off"] = {"p50_ms": p50, "p99_ms": p99, "gateway_cpu_us": cpu}
            print(f"{LABELS[mode]} vs off: {p50:+.3f} ms p50, {p99:+.3f} ms p99, "
                  f"{cpu:+.0f} us gateway CPU per request ({verdict} the 2 ms p50 target)")
    print("guard checks / requests sent: " + ", ".join(
        f"{mode} {checked}/{sent}" for mode, (checked, sent) in checks.items()))
    if holds:
        print("holds left in flight at the end (reserve): " + ", ".join(
            f"{count}" for count in holds.values()))
    print(f"wall time {wall_s:.0f} s")
    if profile:
        print()
        print("\n".join(profile))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
