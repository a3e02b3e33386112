"""``costflux demo``: the whole pipeline on one machine, replaying a real trace.

Starts an embedded broker and Redis, a worker process, and replays the bundled Azure LLM
inference trace (CC-BY-4.0) with rotating models and teams, and GPU samples of a simulated
fleet serving the Llama models (``costflux.cli.demo_gpu``), while a live table shows token, GPU
and idle cost by model and team read back from the worker's allocation API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from rich import box
from rich.console import Console
from rich.live import Live
from rich.table import Table

from costflux.api_client import get_json
from costflux.core.advice_report import render_advice
from costflux.core.trace import Assignment, ColumnMapping
from costflux.embedded import embedded_stack, free_port
from costflux.http_clients import client
from costflux.settings import Settings

__all__ = ["DEMO_ASSIGNMENT", "bundled_trace_path", "demo_usage_events", "run_demo"]

#: Rotation of the trace's rows over models and labels (row i: models[i % 3], team[i % 4], …).
DEMO_MODELS = ("llama-2-70b", "llama-2-7b", "gpt-4")
DEMO_LABELS = {
    "team": ("search", "ads", "chat", "research"),
    "project": ("assistant", "summarizer"),
    "app": ("web", "api", "batch"),
    "namespace": ("ml-prod", "ml-staging"),
    # As long as DEMO_MODELS, so row i's deployment serves row i's model.
    "deployment": tuple(f"{model}-prod" for model in DEMO_MODELS),
    # Two clusters, 3:2, rotating on 5 rows: every cluster sees every model, team, namespace.
    "cluster": ("us-east-1", "us-east-1", "us-east-1", "eu-west-1", "eu-west-1"),
}
DEMO_ASSIGNMENT = (DEMO_MODELS, DEMO_LABELS)
_TRACE_SPAN = "2023-11-16T18:00:00Z,2023-11-16T20:00:00Z"


def bundled_trace_path() -> Path:
    """The Azure LLM inference trace (conversation sample) shipped in the package."""
    return _bundled("azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv")


def _bundled(name: str) -> Path:
    return Path(str(resources.files("costflux").joinpath("data", name)))


def run_demo(
    settings: Settings, *, duration: float | None, speed: float, limit: int | None,
    show_table: bool,
) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds; return an exit code."""
    console = Console()
    token = settings.http_token_value()  # a bad token file stops the demo here, not its worker
    with _sigterm_as_ctrl_c(), embedded_stack(settings) as live:
        port = live.http_port if live.http_port else free_port()
        live = live.model_copy(update={"http_port": port})
        log_path = Path(tempfile.gettempdir()) / f"costflux-demo-worker-{os.getpid()}.log"
        worker = _start_worker(live, log_path)
        try:
            base = f"http://127.0.0.1:{port}"
            api = _WorkerApi(base, token)
            try:
                _wait_ready(base, worker, timeout_s=120)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}; see its log: {log_path}") from None
            redis_shown = _without_credentials(str(live.redis_url))
            # The console first: the picture is one click away.
            console.print(f"[bold]cost console: {base}/ui/[/]"
                          + ("  (sign in with COSTFLUX_HTTP_TOKEN)" if token else ""),
                          soft_wrap=True)
            console.print(f"[bold]costflux demo[/] broker {live.kafka_bootstrap}, "
                          f"redis {redis_shown}, worker log {log_path}")
            console.print(f"  metrics:    {base}/metrics")
            console.print(f"  allocation: {base}/model/allocation?window={_TRACE_SPAN}"
                          "&aggregate=model,label:team")
            console.print(f"  by cluster: {base}/model/allocation?window={_TRACE_SPAN}"
                          "&aggregate=cluster,deployment")
            console.print(f"  GPU cost:   {base}/model/gpu?window={_TRACE_SPAN}"
                          "&aggregate=model  (simulated GPUs serving the Llama models)")
            console.print(f"  budgets:    {base}/api/budgets   alerts: {base}/api/alerts")
            console.print(f"  advice:     {base}/api/advice?window={_TRACE_SPAN}  or "
                          f"costflux advise --window {_TRACE_SPAN}")
            for target, name in ((_replay, "demo-replay"), (_replay_gpus, "demo-gpus")):
                threading.Thread(
                    target=target, args=(live, speed, limit), name=name, daemon=True
                ).start()
            _show(console, api, worker, duration, show_table)
        except KeyboardInterrupt:
            pass
        finally:
            console.print("stopping…")
            _stop(worker)
    return 0


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """``kill`` (or ``timeout``) stops the demo as Ctrl-C does: the worker first, then the
    broker and Redis. Without it the demo died at once and left its worker running, stuck
    retrying a broker that was gone."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _without_credentials(url: str) -> str:
    """The URL for display: a password in redis://user:password@host never reaches a log."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


def _start_worker(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update({
        "COSTFLUX_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
        "COSTFLUX_REDIS_URL": str(settings.redis_url),
        "COSTFLUX_HTTP_PORT": str(settings.http_port),
        "COSTFLUX_HTTP_HOST": "127.0.0.1",
        "COSTFLUX_LOG_LEVEL": "info",
    })
    if settings.budgets_file is None:
        env["COSTFLUX_BUDGETS_FILE"] = str(_bundled("demo_budgets.yaml"))
    # The worker logs to a file so that the terminal holds only the live table.
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "costflux", "worker"], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(base: str, worker: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {worker.returncode}")
        try:
            with client(timeout_s=2) as http:
                if http.get(f"{base}/readyz").status_code == 200:
                    return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the worker was not ready within {timeout_s:.0f}s")


def demo_usage_events(limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The bundled trace's rows as the demo's usage events (``DEMO_ASSIGNMENT``'s rotation)."""
    from costflux.streams.trace import iter_usage_events

    return iter_usage_events(
        bundled_trace_path(), ColumnMapping(),
        Assignment(models=DEMO_MODELS, labels=DEMO_LABELS), id_prefix="azure-conv", limit=limit,
    )


def _replay(settings: Settings, speed: float, limit: int | None) -> None:
    from costflux.streams.kafka import producer_config
    from costflux.streams.pacing import pace
    from costflux.streams.producer import UsageProducer

    with UsageProducer(producer_config(settings), settings.topic_usage) as producer:
        pace(demo_usage_events(limit), producer, speed=speed)


def _replay_gpus(settings: Settings, speed: float, limit: int | None) -> None:
    from costflux.cli.demo_gpu import demo_gpu_samples
    from costflux.streams.kafka import producer_config
    from costflux.streams.pacing import pace
    from costflux.streams.producer import UsageProducer

    with UsageProducer(producer_config(settings), settings.topic_gpu,
                       events_per_message=1) as producer:
        pace(demo_gpu_samples(demo_usage_events(limit)), producer, speed=speed)


def _fetch(api: _WorkerApi) -> list[dict[str, Any]]:
    body = api.get(f"/model/allocation?window={_TRACE_SPAN}&aggregate=model,label:team")
    return [row for group in body.get("data", []) for row in group.values()]


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="LLM cost by model and team (Azure trace, event time)",
                  box=box.SIMPLE, padding=(0, 1), pad_edge=False)
    table.add_column("model", no_wrap=True)
    table.add_column("team", no_wrap=True)
    for column in ("requests", "tokens", "token $", "GPU $", "idle $", "cost $", "$/request",
                   "$/1K tok"):
        table.add_column(column, justify="right", no_wrap=True)
    total_cost, total_requests, total_tokens = 0.0, 0, 0
    for row in rows:
        model, _, team = str(row["name"]).partition("/")
        tokens = int(row["inputTokens"]) + int(row["outputTokens"])
        table.add_row(
            model, team, f"{row['requests']:,}", f"{tokens:,}", f"{row['tokenCost']:.4f}",
            f"{row['gpuCost']:.4f}", f"{row['idleCost']:.4f}", f"{row['totalCost']:.4f}",
            f"{row['costPerRequest']:.6f}", f"{1000 * row['costPerToken']:.6f}",
        )
        total_cost += float(row["totalCost"])
        total_requests += int(row["requests"])
        total_tokens += tokens
    table.add_section()
    table.add_row(
        "total", "", f"{total_requests:,}", f"{total_tokens:,}", "", "", "", f"{total_cost:.4f}",
        f"{total_cost / total_requests:.6f}" if total_requests else "-",
        f"{1000 * total_cost / total_tokens:.6f}" if total_tokens else "-",
    )
    return table


def _show(
    console: Console, api: _WorkerApi, worker: subprocess.Popen[bytes], duration: float | None,
    show_table: bool,
) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    with Live(_table([]), console=console, refresh_per_second=2,
              auto_refresh=False, transient=not show_table) as live_view:
        while deadline is None or time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            try:
                rows = _fetch(api)
            except (OSError, ValueError):  # not up yet, or answering 503: the next second
                rows = []
            if show_table:
                table = _table(rows)
                table.caption = _alerting_line(api)
                live_view.update(table, refresh=True)
            time.sleep(1.0)
    if not show_table:
        rows = _fetch(api)
        console.print(f"requests={sum(int(r['requests']) for r in rows)} "
                      f"cost=${sum(float(r['totalCost']) for r in rows):.6f}")
        console.print(_alerting_line(api))
    console.print(_advice_text(api), markup=False, highlight=False, soft_wrap=True)


def _advice_text(api: _WorkerApi) -> str:
    """The savings advice and ROI table for the trace's span, as ``costflux advise`` prints."""
    try:
        data = api.get(f"/api/advice?window={_TRACE_SPAN}")["data"]
    except (OSError, ValueError):
        return "advice: -"
    return render_advice(data, "table")


def _alerting_line(api: _WorkerApi) -> str:
    """Budgets' status and the firing alerts, in one line."""
    try:
        budgets = api.get("/api/budgets")["data"]
        alerts = api.get("/api/alerts")["data"]
    except (OSError, ValueError):
        return "budgets: -"
    shown = ", ".join(f"{b['name']} {b['status']} (${float(b['spend']):,.2f} of "
                      f"${float(b['limit']):,.0f})" for b in budgets)
    firing = ", ".join(sorted({a["rule"] for a in alerts})) or "none"
    return f"budgets: {shown or '-'}; alerts firing: {len(alerts)} ({firing})"


@dataclass(frozen=True)
class _WorkerApi:
    """The demo's worker, read over HTTP with its bearer token when one is set."""

    base: str
    token: str | None = field(default=None, repr=False)

    def get(self, path: str) -> dict[str, Any]:
        """The JSON answer; a ValueError for an answer not 2xx, an OSError for none."""
        body: dict[str, Any] = get_json(self.base, path, token=self.token, timeout_s=5)
        return body


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
