"""HTTP on the worker: /metrics, /healthz, /readyz, allocation and GPU cost (Faust's web server)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.alerts_view import AlertsView
from agents.metrics import CostMetrics
from agents.serving import ServingView
from costflux.core.allocation import (
    AllocationOptions,
    AllocationQueryError,
    TimeRange,
    allocate,
    cover,
    parse_aggregate,
    parse_window,
)
from costflux.core.gpu_report import gpu_report, parse_gpu_aggregate
from schemas._types import from_epoch_ms

__all__ = ["register_http"]

_EXPOSITION_TYPE = CONTENT_TYPE_LATEST.split("; charset")[0]


def register_http(
    app: faust.App,
    metrics: CostMetrics,
    view: ServingView,
    window_sizes_s: tuple[int, ...],
    readiness: Callable[[], tuple[bool, str]],
    gpu_defaults: AllocationOptions,
    alerts: AlertsView,
) -> None:
    """Add the worker's HTTP endpoints to ``app``'s web server."""
    finest_s = min(window_sizes_s)

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, request: faust.web.Request) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
        return web.bytes(generate_latest(metrics.registry), content_type=_EXPOSITION_TYPE)

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: faust.web.View, request: faust.web.Request) -> Any:
        ready, why = readiness()
        return web.json({"ready": ready, "detail": why}, status=200 if ready else 503)

    async def covered(
        web: faust.web.View, request: faust.web.Request
    ) -> tuple[TimeRange, list[dict[str, list[int]]]]:
        now_ms = await view.newest_event_time_ms() or 0
        span = parse_window(request.query.get("window", "24h"), now_ms, finest_s)
        tiles = cover(span, window_sizes_s)
        if len(tiles) > 20_000:
            raise AllocationQueryError("window too long for one query")
        return span, await view.read_windows(tiles)

    @app.page("/model/allocation")
    async def allocation(web: faust.web.View, request: faust.web.Request) -> Any:
        query = request.query
        try:
            group_by = parse_aggregate(query.get("aggregate", "namespace"))
            options = AllocationOptions(
                share_idle=_flag(query.get("shareIdle"), gpu_defaults.share_idle),
                weight=query.get("gpuWeight", gpu_defaults.weight),
            )
            span, rows = await covered(web, request)
        except AllocationQueryError as exc:
            return web.json({"code": 400, "message": str(exc)}, status=400)
        data = allocate(rows, group_by, span, options)
        return web.json({"code": 200, "data": [data] if data else []})

    @app.page("/model/gpu")
    async def gpu(web: faust.web.View, request: faust.web.Request) -> Any:
        try:
            group_by = parse_gpu_aggregate(request.query.get("aggregate", "gpu_type"))
            span, rows = await covered(web, request)
        except AllocationQueryError as exc:
            return web.json({"code": 400, "message": str(exc)}, status=400)
        data = gpu_report(rows, group_by, span)
        return web.json({"code": 200, "data": [data] if data else []})


    @app.page("/api/budgets")
    async def budgets(web: faust.web.View, request: faust.web.Request) -> Any:
        return web.json({"code": 200, "data": await alerts.budgets(),
                         "evaluatedAt": _iso_or_none(await alerts.evaluated_ms())})

    @app.page("/api/alerts")
    async def active_alerts(web: faust.web.View, request: faust.web.Request) -> Any:
        return web.json({"code": 200, "data": await alerts.alerts(),
                         "evaluatedAt": _iso_or_none(await alerts.evaluated_ms())})


def _iso_or_none(ms: int | None) -> str | None:
    return None if ms is None else from_epoch_ms(ms).isoformat()


def _flag(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise AllocationQueryError(f"shareIdle must be true or false, not {text!r}")
