"""The gateway's admission: who sent a request, and whether its budgets let it through.

``admit`` runs before anything is sent upstream: it derives the request's labels (the key id
and the keys file's team, project and labels, which a client's headers cannot override, and
the end user), finds the enforced budgets that scope it, and reads their spend (the pipeline's
counters, at most a second old) or, in reservation mode, holds the request's maximum cost.
``finish`` settles a hold to the request's real cost once the answer is in.

When Redis does not answer, the fail mode decides: ``open`` lets requests through unchecked,
``closed`` answers 503. Either way the outage is logged once, when it starts, and counted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram

from costflux.core.bill import request_cost
from costflux.core.budgets import Budget
from costflux.core.enforcement import (
    BUDGET_HEADER,
    Scope,
    judge_request,
    max_cost_pico,
    refusal,
    scopes_of,
    soft_header,
)
from costflux.core.pricing import PriceBook
from costflux.gateway.identity import KeyEntry, api_key_of, key_id, request_labels
from costflux.gateway.usage import Route, end_user, reservation_bound
from costflux.streams.budget_counters import BudgetCounters, CountersUnavailable

__all__ = ["Admission", "BudgetGuard", "GuardConfig", "Refusal"]

log = logging.getLogger("costflux.gateway")

FailMode = Literal["open", "closed"]
#: Where a request sets its most output tokens, per route (reservation mode writes the
#: default there when a request sets none, so that its bound holds).
_OUTPUT_LIMIT_FIELD: Mapping[Route, str] = {
    "chat": "max_completion_tokens", "completions": "max_tokens",
    "responses": "max_output_tokens", "messages": "max_tokens",
}
_USER_HEADER = "X-Costflux-User"


@dataclass(frozen=True, slots=True)
class GuardConfig:
    fail_mode: FailMode = "open"
    reservation: bool = False
    default_max_output_tokens: int = 4096  # reservation mode, for requests that set none


@dataclass(slots=True)
class Admission:
    """An admitted request: its event id and labels, the budgets that scope it, its hold."""

    event_id: str
    labels: dict[str, str]
    model: str
    held: tuple[Scope, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)  # for the client's answer
    body_patch: dict[str, int] | None = None  # reservation mode: the output limit it sets


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)


class GuardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter("costflux_gateway_refused_requests", "Requests refused by a "
                               "hard budget", ["budget"], registry=registry)
        self.soft = Counter("costflux_gateway_soft_budget_requests", "Requests let through "
                            "over a soft budget", ["budget"], registry=registry)
        self.unchecked = Counter("costflux_gateway_budget_store_failures", "Requests whose "
                                 "budgets Redis could not check, by what the fail mode did",
                                 ["fail_mode"], registry=registry)
        self.outages = Counter("costflux_gateway_budget_store_outages", "Times Redis stopped "
                               "answering the gateway's budget checks", registry=registry)
        self.check_seconds = Histogram(
            "costflux_gateway_budget_check_seconds", "Time the budget check took per request",
            registry=registry,
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))


class BudgetGuard:
    """Admits or refuses requests by their enforced budgets."""

    def __init__(
        self,
        budgets: Callable[[], Sequence[Budget]],
        keys: Callable[[], Mapping[str, KeyEntry]],
        counters: BudgetCounters | None,
        prices: Callable[[], PriceBook],
        config: GuardConfig,
        registry: CollectorRegistry,
        label_defaults: Mapping[str, str] | None = None,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._budgets = budgets
        self._keys = keys
        self._counters = counters
        self._prices = prices
        self._config = config
        self._defaults = dict(label_defaults or {})
        self._now_ms = wall_clock_ms
        self._metrics = GuardMetrics(registry)
        self._outage = False

    async def admit(self, route: Route, body: Mapping[str, Any], raw_size: int,
                    headers: Mapping[str, str], client_labels: Mapping[str, str],
                    model: str) -> Admission | Refusal:
        started = time.perf_counter()
        secret = api_key_of(headers)
        kid = key_id(secret) if secret else None
        user = end_user(route, body, _header(headers, _USER_HEADER))
        labels = request_labels(self._keys().get(kid) if kid else None, kid, user,
                                client_labels, self._defaults)
        admission = Admission(f"gw:{uuid.uuid4().hex}", labels, model)
        now_ms = self._now_ms()
        scopes = scopes_of(self._budgets(), {**labels, "model": model}, now_ms)
        if not scopes or self._counters is None:
            return admission
        try:
            refused = await self._check(admission, route, body, raw_size, scopes, now_ms)
        except CountersUnavailable as exc:
            return self._unavailable(admission, exc)
        finally:
            self._metrics.check_seconds.observe(time.perf_counter() - started)
        if self._outage:
            self._outage = False
            log.warning("budget store answers again: budgets are enforced again")
        return refused or admission

    async def _check(self, admission: Admission, route: Route, body: Mapping[str, Any],
                     raw_size: int, scopes: list[Scope], now_ms: int) -> Refusal | None:
        assert self._counters is not None
        hard = [s for s in scopes if s.budget.enforce == "hard"]
        soft = [s for s in scopes if s.budget.enforce == "soft"]
        if self._config.reservation and hard:
            refused = await self._hold(admission, route, body, raw_size, hard, now_ms)
            if refused is not None:
                return refused
            checked = soft
        else:
            checked = scopes
        verdict = judge_request(checked, await self._counters.spends(checked))
        if verdict.refused is not None:
            scope, spent = verdict.refused
            self._metrics.refused.labels(scope.budget.name).inc()
            return Refusal(429, refusal(scope, spent), _retry_after(scope, now_ms))
        if verdict.over:
            admission.headers[BUDGET_HEADER] = soft_header(verdict.over)
            for scope, _spent in verdict.over:
                self._metrics.soft.labels(scope.budget.name).inc()
        return None

    async def _hold(self, admission: Admission, route: Route, body: Mapping[str, Any],
                    raw_size: int, hard: list[Scope], now_ms: int) -> Refusal | None:
        assert self._counters is not None
        span = self._prices().model_price_span(admission.model, now_ms)
        if span is None:
            return None  # unpriced: the pipeline counts it as nothing (and dead-letters it)
        input_bound, output_limit = reservation_bound(route, body, raw_size)
        if output_limit is None:
            output_limit = self._config.default_max_output_tokens
            admission.body_patch = {_OUTPUT_LIMIT_FIELD[route]: output_limit}
        bound = max_cost_pico(span[0], input_bound, output_limit)
        answer = await self._counters.hold(hard, admission.event_id, bound, now_ms)
        if not answer.admitted:
            scope = hard[answer.index]
            self._metrics.refused.labels(scope.budget.name).inc()
            return Refusal(429, refusal(scope, answer.spent_pico, answer.held_pico),
                           _retry_after(scope, now_ms))
        admission.held = tuple(hard)
        return None

    def _unavailable(self, admission: Admission, exc: CountersUnavailable) -> Admission | Refusal:
        mode = self._config.fail_mode
        self._metrics.unchecked.labels(mode).inc()
        if not self._outage:
            self._outage = True
            self._metrics.outages.inc()
            log.error("budget store (Redis) not answering (%s): failing %s until it does%s",
                      exc, mode, "" if mode == "closed" else "; budgets are not enforced")
        if mode == "closed":
            return Refusal(503, {"error": {
                "type": "budget_check_unavailable", "code": "budget_check_unavailable",
                "message": "budgets cannot be checked: the gateway's budget store is not "
                           "answering, and this gateway fails closed; retry shortly"}},
                {"Retry-After": "1"})
        return admission

    async def finish(self, admission: Admission, usage: Mapping[str, int] | None,
                     ok: bool) -> None:
        """Settle the request's hold to its real cost (release it if it cost nothing)."""
        if not admission.held or self._counters is None:
            return
        now_ms = self._now_ms()
        cost = self._cost(admission.model, usage, now_ms) if usage else 0
        try:
            if cost or ok:
                await self._counters.settle(admission.held, admission.event_id, cost, now_ms)
            else:
                await self._counters.release(admission.held, admission.event_id)
        except CountersUnavailable:
            pass  # the hold stays at its bound until its deadline: safe, only stricter

    def _cost(self, model: str, usage: Mapping[str, int], now_ms: int) -> int:
        span = self._prices().model_price_span(model, now_ms)
        if span is None:
            return 0
        return request_cost(span[0], {"input_tokens": 0, "output_tokens": 0, **usage})[0]


def _retry_after(scope: Scope, now_ms: int) -> dict[str, str]:
    """Seconds until the budget's period ends (RFC 9110 Retry-After)."""
    return {"Retry-After": str(max(1, -(-(scope.period_end_ms - now_ms) // 1000)))}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)
