"""How fast the cost console draws its overview with the demo's data, and what it transfers.

    python bench/ui.py [--loads 5] [--chromium /usr/bin/chromium]

Starts ``costflux demo --speed 0`` (its embedded broker, Redis and worker, the bundled trace
and GPU samples, the demo's budgets), waits until the whole trace is served and the budgets
are evaluated to its end, then opens http://…/ui/ in headless Chromium (Debian's, through
Playwright) ``--loads`` times, each in a fresh browser context (an empty cache):

- time: from navigation start to the overview drawn (the page's own
  ``performance.mark("costflux:drawn:overview")``, set once every number, table and trend is
  in the page), p50 and each load;
- bytes: every response's headers and body as received (gzip where the worker sends it),
  by kind: the page and its scripts, uPlot, the API's JSON;
- then a reload in the same context (a warm cache: every file revalidated, 304s).

Writes bench/results/ui.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, Request, sync_playwright

from costflux.embedded import free_port

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
TRACE_EVENTS, GPU_SAMPLES = 19_366, 1_053
FINAL_EVALUATION = "2023-11-16T19:09:00+00:00"


def _get(url: str) -> tuple[int, bytes]:
    response = httpx.get(url, timeout=5)  # loopback only
    return response.status_code, response.content


def _metric(base: str, name: str) -> float:
    status, body = _get(f"{base}/metrics")
    for line in body.decode().splitlines() if status == 200 else []:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def wait_served(base: str, demo: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    """Until the demo's worker has served the whole trace and evaluated its budgets to it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if demo.poll() is not None:
            raise SystemExit(f"the demo exited ({demo.returncode})")
        try:
            if (_metric(base, "costflux_ingest_events_total") == TRACE_EVENTS
                    and _metric(base, "costflux_gpu_samples_total") == GPU_SAMPLES
                    and json.loads(_get(f"{base}/api/budgets")[1])["evaluatedAt"]
                    == FINAL_EVALUATION):
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the demo did not serve the trace within {timeout_s:.0f}s")


def _kind(url: str) -> str:
    if "/ui/static/uplot." in url:
        return "uplot"
    if "/ui/" in url:
        return "console"
    return "api"


def load(page: Page, url: str) -> dict[str, Any]:
    """One navigation to the overview: time to drawn, and the bytes of every response."""
    finished: list[Request] = []

    def record(request: Request) -> None:  # Playwright tags the handler: no bound builtin
        finished.append(request)

    page.on("requestfinished", record)
    page.goto(url)
    page.locator("body[data-page='overview'][data-state='drawn']").wait_for(state="attached")
    drawn_ms = page.evaluate(
        "() => performance.getEntriesByName('costflux:drawn:overview').at(-1).startTime")
    page.remove_listener("requestfinished", record)
    by_kind: dict[str, dict[str, int]] = {}
    for request in finished:
        sizes = request.sizes()
        response = request.response()
        entry = by_kind.setdefault(_kind(request.url), {"requests": 0, "bytes": 0,
                                                        "not_modified": 0})
        entry["requests"] += 1
        entry["bytes"] += sizes["responseHeadersSize"] + sizes["responseBodySize"]
        entry["not_modified"] += response is not None and response.status == 304
    return {"drawn_ms": round(drawn_ms, 1), "by_kind": by_kind,
            "bytes": sum(k["bytes"] for k in by_kind.values()),
            "requests": sum(k["requests"] for k in by_kind.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--chromium", default=os.environ.get("COSTFLUX_CHROMIUM")
                        or shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    env["COSTFLUX_HTTP_PORT"] = str(port)
    demo = subprocess.Popen([sys.executable, "-m", "costflux", "demo", "--speed", "0",
                             "--no-table", "--duration", "3600"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        started = time.monotonic()
        wait_served(base, demo)
        print(f"demo served the trace in {time.monotonic() - started:.0f}s", file=sys.stderr)
        cold, warm = [], []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium)
            for _ in range(args.loads):
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                cold.append(load(page, f"{base}/ui/"))
                warm.append(load(page, f"{base}/ui/?warm"))  # same cache: revalidated
                context.close()
            version = browser.version
            browser.close()
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(60)
        except subprocess.TimeoutExpired:
            demo.kill()

    def p50(loads: list[dict[str, Any]]) -> float:
        drawn: list[float] = [load["drawn_ms"] for load in loads]
        return statistics.median(drawn)

    result = {"chromium": version, "loads": args.loads,
              "cold": {"p50_drawn_ms": p50(cold), "each": cold},
              "warm": {"p50_drawn_ms": p50(warm), "each": warm}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ui.json").write_text(json.dumps(result, indent=2))
    print(f"Chromium {version}, {args.loads} loads of /ui/ (overview), demo data\n")
    print("| cache | drawn p50 | each (ms) | requests | bytes | uPlot | console files | API JSON |")
    print("|---|---|---|---|---|---|---|---|")
    for name, loads in (("cold", cold), ("warm", warm)):
        each = ", ".join(f"{one['drawn_ms']:.0f}" for one in loads)
        kinds = "".join(f" | {loads[0]['by_kind'].get(kind, {}).get('bytes', 0):,}"
                        for kind in ("uplot", "console", "api"))
        print(f"| {name} | {p50(loads):.0f} ms | {each} | {loads[0]['requests']} "
              f"| {loads[0]['bytes']:,}{kinds} |")


if __name__ == "__main__":
    main()
