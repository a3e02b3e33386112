"""The worker's HTTP API as plain methods: query parameters in, a status and a JSON body out.

:class:`WorkerApi` answers /model/allocation, /model/gpu, /api/budgets, /api/alerts,
/api/advice, /metrics and the probes from two readers: window rows (``costflux.agents.serving``'s
``ServingView``) and the budgets-and-alerts view (``costflux.agents.alerts_view``'s ``AlertsView``).
Any object with their read methods will do, so a test passes rows held in memory and needs
no web server, worker or Redis; ``costflux.agents.http`` routes the web requests to these methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest

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
from costflux.core.rows import UsageSums, WindowRows
from costflux.core.spike import HOUR_MS
from costflux.schemas._types import from_epoch_ms

__all__ = ["AdviceInputs", "AlertReader", "JsonAnswer", "Probe", "WindowReader", "WorkerApi"]

#: One query reads at most this many windows: a longer window needs a coarser finest size.
MAX_TILES_PER_QUERY = 20_000

#: (ok, why): a liveness or readiness check.
Probe = Callable[[], tuple[bool, str]]


class WindowReader(Protocol):
    """Window rows and the event-time facts the API's windows are resolved against."""

    async def newest_event_time_ms(self) -> int | None:
        """The newest event time counted (epoch ms); None before any."""

    async def earliest_window_ms(self, size_s: int) -> int | None:
        """The start of the oldest window of ``size_s`` still held."""

    async def read_windows(self, tiles: list[tuple[int, int]]) -> list[WindowRows]:
        """Rows of each (size_s, start_ms) window, in order; absent windows read as empty."""

    async def read_principal_days(self, label: str, days: list[int]
                                  ) -> dict[int, dict[str, UsageSums]]:
        """Each UTC day's usage per value of ``label`` (``api_key``, ``end_user``)."""


class AlertReader(Protocol):
    """The budgets' statuses and the firing alerts, as last evaluated."""

    async def budgets(self) -> list[dict[str, Any]]:
        """Every budget's status, JSON-shaped, by name."""

    async def alerts(self) -> list[dict[str, Any]]:
        """Every firing alert, JSON-shaped, oldest first."""

    async def evaluated_ms(self) -> int | None:
        """The event time the view was last evaluated at; None before the first evaluation."""


@dataclass(frozen=True, slots=True)
class AdviceInputs:
    """What savings advice needs besides window rows: its assumptions and current prices."""

    assumptions: Assumptions
    model_price: Callable[[str, int], ModelPrice | None]  # (model, event time ms)


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """An endpoint's answer: the JSON body and the HTTP status."""

    body: dict[str, Any]
    status: int = 200


class WorkerApi:
    """The worker's endpoints, one method each, over injected readers.

    ``window_sizes_s``: the window sizes held (the finest bounds steps and relative windows).
    ``gpu_defaults``: GPU cost sharing when the query names none. ``other_costs``: the
    non-token cost components, re-read on every query (prices reload live). ``probes``:
    (liveness, readiness). ``registry``: what /metrics exposes.
    """

    def __init__(
        self,
        windows: WindowReader,
        alerts: AlertReader,
        *,
        window_sizes_s: tuple[int, ...],
        gpu_defaults: AllocationOptions,
        advice: AdviceInputs,
        other_costs: Callable[[], Mapping[str, OtherCost]],
        probes: tuple[Probe, Probe],
        registry: CollectorRegistry,
    ) -> None:
        if not window_sizes_s:
            raise ValueError("window_sizes_s needs at least one window size")
        self._windows = windows
        self._alerts = alerts
        self._sizes_s = window_sizes_s
        self._finest_s = min(window_sizes_s)
        self._gpu_defaults = gpu_defaults
        self._advice = advice
        self._other_costs = other_costs
        self._liveness, self._readiness = probes
        self._registry = registry

    def metrics(self) -> bytes:
        """/metrics: the registry in the Prometheus text exposition format."""
        return generate_latest(self._registry)

    def healthz(self) -> JsonAnswer:
        """/healthz: 200 while alive, 503 with the reason once not."""
        alive, why = self._liveness()
        if alive:
            return JsonAnswer({"status": "ok"})
        return JsonAnswer({"status": "failed", "detail": why}, 503)

    def readyz(self) -> JsonAnswer:
        """/readyz: 200 when ready to answer, 503 with the reason while not."""
        ready, why = self._readiness()
        return JsonAnswer({"ready": ready, "detail": why}, 200 if ready else 503)

    async def allocation(self, query: Mapping[str, str]) -> JsonAnswer:
        """/model/allocation, Kubecost's: one set for the window, or one per ``step``
        (``accumulate=true`` sums the steps into one set). ``aggregate=api_key`` or
        ``end_user``: whole UTC days from their daily roll-up (costflux.core.principals)."""
        try:
            aggregate = query.get("aggregate", "namespace")
            principal = principal_aggregate(aggregate)
            group_by = [] if principal else parse_aggregate(aggregate)
            options = AllocationOptions(
                share_idle=_flag("shareIdle", query.get("shareIdle"),
                                 self._gpu_defaults.share_idle),
                weight=query.get("gpuWeight", self._gpu_defaults.weight),
            )
            step_ms = parse_step(query.get("step"), self._finest_s)
            whole = step_ms is None or _flag("accumulate", query.get("accumulate"), False)
            if principal:
                step_ms = day_step(step_ms)
                now_ms = await self._windows.newest_event_time_ms()
                span = parse_day_window(query.get("window", "1d"), now_ms or 0)
            else:
                span = await self._window(query)
            steps = [span] if whole or step_ms is None else split_steps(span, step_ms)
            step_rows = await self._read_spans(steps)
            held = {} if principal is None else await self._windows.read_principal_days(
                principal, day_starts(span))
        except AllocationQueryError as exc:
            return _bad_request(exc)

        def allocation_of(step: TimeRange, rows: list[WindowRows]) -> dict[str, Any]:
            if not principal:
                return allocate(rows, group_by, step, options)
            days = (held[day] for day in day_starts(step))
            return allocation_set(principal_costs(days, rows, options), step)

        components = self._other_costs()  # each step is charged its own part of the month
        sets = [with_other_costs(allocation_of(step, rows), step, components)
                for step, rows in zip(steps, step_rows, strict=True)]
        if whole:
            return JsonAnswer({"code": 200, "data": [sets[0]] if sets[0] else []})
        return JsonAnswer({"code": 200, "data": sets})

    async def gpu(self, query: Mapping[str, str]) -> JsonAnswer:
        """/model/gpu: GPU time and cost for the window, or one set per ``step``."""
        try:
            group_by = parse_gpu_aggregate(query.get("aggregate", "gpu_type"))
            step_ms = parse_step(query.get("step"), self._finest_s)
            if step_ms is None:
                span = await self._window(query)
                (rows,) = await self._read_spans([span])
                data = gpu_report(rows, group_by, span)
                return JsonAnswer({"code": 200, "data": [data] if data else []})
            steps = split_steps(await self._window(query), step_ms)
            step_rows = await self._read_spans(steps)
        except AllocationQueryError as exc:
            return _bad_request(exc)
        return JsonAnswer({"code": 200, "data": [
            gpu_report(rows, group_by, step) for step, rows in zip(steps, step_rows, strict=True)
        ]})

    async def budgets(self) -> JsonAnswer:
        """/api/budgets: every budget's status and when it was evaluated."""
        return JsonAnswer({"code": 200, "data": await self._alerts.budgets(),
                           "evaluatedAt": _iso_or_none(await self._alerts.evaluated_ms())})

    async def alerts(self) -> JsonAnswer:
        """/api/alerts: the firing alerts and when they were evaluated."""
        return JsonAnswer({"code": 200, "data": await self._alerts.alerts(),
                           "evaluatedAt": _iso_or_none(await self._alerts.evaluated_ms())})

    async def advice(self, query: Mapping[str, str]) -> JsonAnswer:
        """/api/advice: estimated monthly savings and the ROI table, from the window's hourly
        rows."""
        try:
            span, newest = await self._window_and_now(query, "7d")
            held = measurable(span, await self._windows.earliest_window_ms(self._finest_s),
                              newest, self._finest_s)
            hours = split_steps(held, HOUR_MS) if held else []
            rows = await self._read_spans(hours)
        except AllocationQueryError as exc:
            return _bad_request(exc)
        inputs = self._advice
        result = advise(list(zip(hours, rows, strict=True)),
                        lambda model: inputs.model_price(model, span.end_ms - 1),
                        inputs.assumptions)
        return JsonAnswer({"code": 200, "data": advice_answer(result)})

    async def _window_and_now(self, query: Mapping[str, str], default: str
                              ) -> tuple[TimeRange, int | None]:
        """The ``window`` parameter's span, and "now": the newest event time (None before any)."""
        now_ms = await self._windows.newest_event_time_ms()
        span = parse_window(query.get("window", default), now_ms or 0, self._finest_s)
        return span, now_ms

    async def _window(self, query: Mapping[str, str]) -> TimeRange:
        return (await self._window_and_now(query, "24h"))[0]

    async def _read_spans(self, spans: list[TimeRange]) -> list[list[WindowRows]]:
        """The rows of the windows tiling each span, one list per span."""
        tiles = [cover(span, self._sizes_s) for span in spans]
        if sum(len(t) for t in tiles) > MAX_TILES_PER_QUERY:
            raise AllocationQueryError("window too long for one query")
        rows = await self._windows.read_windows([tile for span_tiles in tiles
                                                 for tile in span_tiles])
        per_span, position = [], 0
        for span_tiles in tiles:
            per_span.append(rows[position:position + len(span_tiles)])
            position += len(span_tiles)
        return per_span


def _bad_request(exc: AllocationQueryError) -> JsonAnswer:
    return JsonAnswer({"code": 400, "message": str(exc)}, 400)


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
