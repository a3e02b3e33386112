"""The detector agent: evaluates alert rules and budgets as the watermark moves.

Every worker watches the global watermark (``costflux.agents.watermark``: windows before it are
complete in the cost store, written in the same atomic step as the clocks it is taken from)
and, once a value has stood for ``settle_s``, sends a tick with the newest evaluation time it
covers to a one-partition topic. Whichever worker owns that
partition runs every evaluation step up to the tick, in order, reading window rows from the
serving view; ticks from several workers or replayed ticks are no-ops (steps already taken
are recorded in the table). Rule instances' states live in a Faust table on the same single
partition, so they move with it on a rebalance and are restored from its changelog.

Order per step: send the alert events and wait for Kafka to take them, then record the new
states. A crash in between re-runs the step and re-sends the same events with the same
``alert_id``, state and repeat, which the notifier delivers once. The same holds when a
restarted worker restores the table short of its newest changelog records: each tick names
the time to evaluate up to, so the steps after the restored one run again, identically.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import faust

from costflux.agents.alert_metrics import AlertMetrics
from costflux.agents.alerts_view import AlertsView
from costflux.agents.serving import ServingView
from costflux.core.alerts import AlertState
from costflux.core.detect import Detection, StepResult
from costflux.core.signals import Rows, Tile
from costflux.streams.health import Health, guarded

__all__ = ["Detector"]

log = logging.getLogger(__name__)

_EVALUATED = b"\x00evaluated"  # the table key of the newest evaluated time (not an instance)
_TICK = b"tick"


@dataclass(frozen=True, slots=True)
class DetectorOptions:
    ticks_topic: str
    alerts_topic: str
    settle_s: float
    backfill_ms: int
    finest_window_s: int


class Detector:
    """Registers the tick timer and the detect agent on a Faust app."""

    def __init__(
        self,
        app: faust.App,
        detection: Callable[[], Detection],  # the current rules and budgets (reloaded)
        options: DetectorOptions,
        watermark: Callable[[], int | None],
        windows: ServingView,
        view: AlertsView,
        metrics: AlertMetrics,
        health: Health,
    ) -> None:
        self._app = app
        self._detection = detection
        self._options = options
        self._step_ms = detection().options.step_ms  # from the settings: never reloaded
        self._settle_s = options.settle_s
        self._watermark = watermark
        self._windows = windows
        self._view = view
        self._metrics = metrics
        self._seen: deque[tuple[float, int]] = deque()  # (monotonic, watermark) not yet settled
        self._settled_ms: int | None = None
        self._last_tick = -1
        self._tiles: dict[Tile, Rows] = {}
        self.table = app.Table("alert-states", partitions=1, key_type=bytes, default=None)
        self._ticks = app.topic(options.ticks_topic, key_type=bytes, value_type=bytes,
                                key_serializer="raw", value_serializer="raw", partitions=1)
        self._alerts = app.topic(options.alerts_topic, key_serializer="raw",
                                 value_serializer="raw")
        app.agent(self._ticks, name="costflux.detect")(self._detect)
        # Guarded: a tick the broker refuses is reported and sent again at the next beat,
        # instead of the timer's exception stopping the worker.
        app.timer(0.2, name="costflux.detect_tick")(
            guarded(health, "costflux.detect_tick", self._send_tick))

    # --- ticks ----------------------------------------------------------------------------

    async def _send_tick(self) -> None:
        now = time.monotonic()
        watermark = self._watermark()
        if watermark is not None and (not self._seen or watermark > self._seen[-1][1]):
            self._seen.append((now, watermark))
        while self._seen and now - self._seen[0][0] >= self._settle_s:
            self._settled_ms = self._seen.popleft()[1]
        if self._settled_ms is None:
            return
        tick = self._settled_ms - self._settled_ms % self._step_ms
        if tick > self._last_tick:
            await self._ticks.send(key=_TICK, value=str(tick).encode())
            self._last_tick = tick

    # --- evaluation -----------------------------------------------------------------------

    async def _detect(self, stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            await self._advance_to(int(value))

    async def _advance_to(self, tick_ms: int) -> None:
        evaluated = self.table.get(_EVALUATED)
        if evaluated is None:
            first = await self._first_step(tick_ms)
        else:
            first = evaluated["t"] + self._step_ms
        last: StepResult | None = None
        last_t = tick_ms
        detection = self._detection()  # one set of rules for the whole tick
        for number, t_ms in enumerate(range(first, tick_ms + 1, self._step_ms)):
            if self._app.should_stop:
                # A long catch-up must not hold the worker's shutdown (Faust waits for the
                # tick in hand): every step taken is recorded, and the next owner's first
                # tick carries on from there.
                break
            last, last_t = await self._step(detection, t_ms), t_ms
            if number % 50 == 49:
                await asyncio.sleep(0)  # a long catch-up must not starve the other agents
        if last is not None:
            await self._view.write(last.budgets, detection.active(self._states()), last_t)
            self._metrics.set_budgets(last.budgets)

    def _states(self) -> dict[str, AlertState]:
        """The rule instances' states, as the table holds them (only active ones are kept)."""
        return {key.decode(): AlertState(**value) for key, value in self.table.items()
                if key != _EVALUATED}

    async def _first_step(self, tick_ms: int) -> int:
        """Where a detector without state starts: after the oldest window held (so a replay
        is evaluated from its beginning, whenever the worker started), within the backfill."""
        oldest = await self._windows.earliest_window_ms(self._options.finest_window_s)
        start = max(oldest or tick_ms, tick_ms - self._options.backfill_ms)
        return min(tick_ms, -(-start // self._step_ms) * self._step_ms + self._step_ms)

    async def _step(self, detection: Detection, t_ms: int) -> StepResult:
        needed = detection.tiles_for(t_ms)
        missing = [tile for tile in needed if tile not in self._tiles]
        if missing:
            # Windows before the watermark are final: read each once, keep it while needed.
            self._tiles.update(zip(missing, await self._windows.read_windows(missing),
                                   strict=True))
        result = detection.step(t_ms, self._tiles, self._states())
        for event in result.events:
            delivery = await self._alerts.send(key=event.alert_id.encode(),
                                               value=event.model_dump_json().encode())
            await delivery
            log.info("alert %s %s %s %s", event.rule, event.state, event.labels, event.alert_id)
        for key, state in result.states.items():
            if state is None:
                self.table.pop(key.encode(), None)
            else:
                self.table[key.encode()] = _jsonable(state)
        self.table[_EVALUATED] = {"t": t_ms}
        self._metrics.count(result.events)
        if result.spike_ratios is not None:
            self._metrics.set_spike_ratios(result.spike_ratios)
        for tile in set(self._tiles) - needed:
            del self._tiles[tile]
        return result


def _jsonable(state: AlertState) -> dict[str, Any]:
    return asdict(state)
