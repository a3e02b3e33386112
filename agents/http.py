"""HTTP on the worker: /metrics, /healthz, /readyz, allocation, GPU cost, budgets, alerts,
savings advice and the cost console at /ui (Faust's web server), optionally behind a bearer
token (agents.http_access)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import faust
from aiohttp import web as aioweb
from aiohttp.web_response import ContentCoding
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.alerts_view import AlertsView
from agents.http_access import LOGIN_PATH, HttpAccess, sign_in
from agents.serving import ServingView
from agents.ui import register_ui
from costflux.core.advice import Assumptions, advise, measurable
from costflux.core.advice_report import advice_answer
from costflux.core.allocation import (
    AllocationOptions,
    AllocationQueryError,
    TimeRange,
    allocate,
    allocation_set,
    cover,
    parse_aggregate,
    parse_step,
    parse_window,
    split_steps,
)
from costflux.core.gpu_report import gpu_report, parse_gpu_aggregate
from costflux.core.overheads import with_other_costs
from costflux.core.pricing import ModelPrice, OtherCost
from costflux.core.principals import (
    day_starts,
    day_step,
    parse_day_window,
    principal_aggregate,
    principal_costs,
)
from costflux.core.rows import WindowRows
from costflux.core.spike import HOUR_MS
from schemas._types import from_epoch_ms
from streams.metrics import CostMetrics

__all__ = ["AdviceInputs", "register_http"]

_EXPOSITION_TYPE = CONTENT_TYPE_LATEST.split("; charset")[0]


def register_http(
    app: faust.App,
    metrics: CostMetrics,
    view: ServingView,
    window_sizes_s: tuple[int, ...],
    probes: tuple[Callable[[], tuple[bool, str]], Callable[[], tuple[bool, str]]],
    gpu_defaults: AllocationOptions,
    alerts: AlertsView,
    *,
    advice: AdviceInputs,
    other_costs: Callable[[], Mapping[str, OtherCost]],
    access: HttpAccess | None = None,
) -> None:
    """Add the worker's HTTP endpoints to ``app``'s web server.

    ``probes`` are (liveness, readiness): each answers (ok, why) for /healthz and /readyz.
    ``access``: the bearer token rule for every path (None: open).
    """
    finest_s = min(window_sizes_s)
    liveness, readiness = probes
    rule = access or HttpAccess(None)
    # Faust's aiohttp driver: its Application takes middlewares until the server starts. The
    # token check comes first, so nothing (Faust's own pages included) answers without it.
    web_app = cast(Any, app.web).web_app
    web_app.middlewares.append(rule.middleware())
    web_app.middlewares.append(_gzip_json)
    register_ui(app)

    @app.page(LOGIN_PATH)
    class SignIn(faust.web.View):  # the one page the token check lets through
        async def get(self, request: faust.web.Request) -> Any:
            return await sign_in(rule, cast(aioweb.Request, request))

        async def post(self, request: faust.web.Request) -> Any:
            return await sign_in(rule, cast(aioweb.Request, request))

    @app.page("/metrics")
    async def metrics_page(web: faust.web.View, request: faust.web.Request) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is UTF-8 anyway.
        return web.bytes(generate_latest(metrics.registry), content_type=_EXPOSITION_TYPE)

    @app.page("/healthz")
    async def healthz(web: faust.web.View, request: faust.web.Request) -> Any:
        alive, why = liveness()
        if alive:
            return web.json({"status": "ok"})
        return web.json({"status": "failed", "detail": why}, status=503)

    @app.page("/readyz")
    async def readyz(web: faust.web.View, request: faust.web.Request) -> Any:
        ready, why = readiness()
        return web.json({"ready": ready, "detail": why}, status=200 if ready else 503)

    async def window_and_now(
        request: faust.web.Request, default: str
    ) -> tuple[TimeRange, int | None]:
        """The ``window`` parameter's span, and "now": the newest event time (None before any)."""
        now_ms = await view.newest_event_time_ms()
        return parse_window(request.query.get("window", default), now_ms or 0, finest_s), now_ms

    async def window_of(request: faust.web.Request) -> TimeRange:
        return (await window_and_now(request, "24h"))[0]

    async def read_spans(spans: list[TimeRange]) -> list[list[WindowRows]]:
        """The rows of the windows tiling each span, one list per span."""
        tiles = [cover(span, window_sizes_s) for span in spans]
        if sum(len(t) for t in tiles) > 20_000:
            raise AllocationQueryError("window too long for one query")
        rows = await view.read_windows([tile for span_tiles in tiles for tile in span_tiles])
        per_span, position = [], 0
        for span_tiles in tiles:
            per_span.append(rows[position:position + len(span_tiles)])
            position += len(span_tiles)
        return per_span

    async def covered(
        web: faust.web.View, request: faust.web.Request
    ) -> tuple[TimeRange, list[WindowRows]]:
        span = await window_of(request)
        return span, (await read_spans([span]))[0]

    @app.page("/model/allocation")
    async def allocation(web: faust.web.View, request: faust.web.Request) -> Any:
        """Kubecost's /model/allocation: one set for the window, or one per ``step``
        (``accumulate=true`` sums the steps into one set). ``aggregate=api_key`` or
        ``end_user``: whole UTC days from their daily roll-up (costflux.core.principals)."""
        query = request.query
        try:
            aggregate = query.get("aggregate", "namespace")
            principal = principal_aggregate(aggregate)
            group_by = [] if principal else parse_aggregate(aggregate)
            options = AllocationOptions(
                share_idle=_flag("shareIdle", query.get("shareIdle"), gpu_defaults.share_idle),
                weight=query.get("gpuWeight", gpu_defaults.weight),
            )
            step_ms = parse_step(query.get("step"), finest_s)
            whole = step_ms is None or _flag("accumulate", query.get("accumulate"), False)
            if principal:
                step_ms = day_step(step_ms)
                now_ms = await view.newest_event_time_ms()
                span = parse_day_window(query.get("window", "1d"), now_ms or 0)
            else:
                span = await window_of(request)
            steps = [span] if whole or step_ms is None else split_steps(span, step_ms)
            step_rows = await read_spans(steps)
            held = {} if principal is None else await view.read_principal_days(
                principal, day_starts(span))
        except AllocationQueryError as exc:
            return web.json({"code": 400, "message": str(exc)}, status=400)

        def allocation_of(step: TimeRange, rows: list[WindowRows]) -> dict[str, Any]:
            if not principal:
                return allocate(rows, group_by, step, options)
            days = (held[day] for day in day_starts(step))
            return allocation_set(principal_costs(days, rows, options), step)

        components = other_costs()  # each step is charged its own part of the month
        sets = [with_other_costs(allocation_of(step, rows), step, components)
                for step, rows in zip(steps, step_rows, strict=True)]
        if whole:
            return web.json({"code": 200, "data": [sets[0]] if sets[0] else []})
        return web.json({"code": 200, "data": sets})

    @app.page("/model/gpu")
    async def gpu(web: faust.web.View, request: faust.web.Request) -> Any:
        """GPU time and cost for the window, or one set per ``step`` (as /model/allocation)."""
        try:
            group_by = parse_gpu_aggregate(request.query.get("aggregate", "gpu_type"))
            step_ms = parse_step(request.query.get("step"), finest_s)
            if step_ms is None:
                span, rows = await covered(web, request)
                data = gpu_report(rows, group_by, span)
                return web.json({"code": 200, "data": [data] if data else []})
            steps = split_steps(await window_of(request), step_ms)
            step_rows = await read_spans(steps)
        except AllocationQueryError as exc:
            return web.json({"code": 400, "message": str(exc)}, status=400)
        return web.json({"code": 200, "data": [
            gpu_report(rows, group_by, step) for step, rows in zip(steps, step_rows, strict=True)
        ]})

    @app.page("/api/budgets")
    async def budgets(web: faust.web.View, request: faust.web.Request) -> Any:
        return web.json({"code": 200, "data": await alerts.budgets(),
                         "evaluatedAt": _iso_or_none(await alerts.evaluated_ms())})

    @app.page("/api/alerts")
    async def active_alerts(web: faust.web.View, request: faust.web.Request) -> Any:
        return web.json({"code": 200, "data": await alerts.alerts(),
                         "evaluatedAt": _iso_or_none(await alerts.evaluated_ms())})

    @app.page("/api/advice")
    async def savings_advice(web: faust.web.View, request: faust.web.Request) -> Any:
        """Estimated monthly savings and the ROI table, from the window's hourly rows."""
        try:
            span, newest = await window_and_now(request, "7d")
            held = measurable(span, await view.earliest_window_ms(finest_s), newest, finest_s)
            hours = split_steps(held, HOUR_MS) if held else []
            rows = await read_spans(hours)
        except AllocationQueryError as exc:
            return web.json({"code": 400, "message": str(exc)}, status=400)
        result = advise(list(zip(hours, rows, strict=True)),
                        lambda model: advice.model_price(model, span.end_ms - 1),
                        advice.assumptions)
        return web.json({"code": 200, "data": advice_answer(result)})


@dataclass(frozen=True, slots=True)
class AdviceInputs:
    """What savings advice needs besides window rows: its assumptions and current prices."""

    assumptions: Assumptions
    model_price: Callable[[str, int], ModelPrice | None]  # (model, event time ms)


#: Smaller JSON answers are not worth a gzip stream's header and CPU.
_GZIP_MIN_BYTES = 1024


@aioweb.middleware
async def _gzip_json(
    request: aioweb.Request,
    handler: Callable[[aioweb.Request], Any],
) -> aioweb.StreamResponse:
    """Gzip the API's JSON answers for clients that accept it: a stepped allocation query is
    ~90 % smaller on the wire. Clients that do not ask (urllib, curl) get them as before."""
    response: aioweb.StreamResponse = await handler(request)
    if (isinstance(response, aioweb.Response) and response.content_type == "application/json"
            and isinstance(response.body, bytes) and len(response.body) >= _GZIP_MIN_BYTES
            and "gzip" in request.headers.get("Accept-Encoding", "").lower()):
        response.enable_compression(ContentCoding.gzip)
        response.headers["Vary"] = "Accept-Encoding"
    return response


def _iso_or_none(ms: int | None) -> str | None:
    return None if ms is None else from_epoch_ms(ms).isoformat()


def _flag(name: str, text: str | None, default: bool) -> bool:
    if text is None:
        return default
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise AllocationQueryError(f"{name} must be true or false, not {text!r}")
