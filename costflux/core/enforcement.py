"""What the gateway decides about one request from its enforced budgets' spend. Pure.

A request is *scoped* by every enforced budget whose scope its labels match (a ``"*"`` budget
through the request's own API key or end user). Each scope's spend in the current period is
the budget counter the pipeline keeps (costflux.core.spend). A hard budget whose spend has
reached its amount refuses the request before anything is sent upstream; a soft one lets it
through and says so in a header.

Reservation mode adds what admitted requests may still cost: a request is admitted only if
spend + held + its own most expensive outcome stays within the amount (streams.budget_counters
does that sum atomically in Redis; ``max_cost_pico`` is the request's bound).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from costflux.core.budgets import PRINCIPAL_KEYS, Budget
from costflux.core.money import pico_to_exact_string
from costflux.core.pricing import ModelPrice, ModelTier

__all__ = [
    "BUDGET_HEADER",
    "Scope",
    "Verdict",
    "judge_request",
    "max_cost_pico",
    "refusal",
    "scopes_of",
    "soft_header",
]

#: The answer header naming soft budgets a request is over.
BUDGET_HEADER = "X-Costflux-Budget"


@dataclass(frozen=True, slots=True)
class Scope:
    """One enforced budget as it applies to one request: its counter and current period."""

    budget: Budget
    period_start_ms: int
    period_end_ms: int
    field: str  # the counter's field: the request's API key or end user for "*", else ""

    @property
    def counter_id(self) -> str:
        return self.budget.counter_id


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision: ``refused`` is the first hard budget reached (None: admitted); ``over``
    the soft budgets reached, with their spend."""

    refused: tuple[Scope, int] | None
    over: tuple[tuple[Scope, int], ...]


def scopes_of(budgets: Iterable[Budget], labels: Mapping[str, str], now_ms: int
              ) -> list[Scope]:
    """The enforced budgets that scope a request with ``labels`` (its API key and end user
    among them), in their period at ``now_ms``."""
    scopes = []
    for budget in budgets:
        if budget.enforce == "none" or not budget.matches(labels):
            continue
        start, end = budget.period_at(now_ms)
        each = budget.per_principal
        scopes.append(Scope(budget, start, end, labels[each] if each else ""))
    return scopes


def judge_request(scopes: Sequence[Scope], spends_pico: Sequence[int]) -> Verdict:
    """Refused by the first hard budget whose spend has reached its amount; the soft budgets
    reached are listed."""
    over = []
    for scope, spent in zip(scopes, spends_pico, strict=True):
        if spent < scope.budget.amount_pico:
            continue
        if scope.budget.enforce == "hard":
            return Verdict((scope, spent), ())
        over.append((scope, spent))
    return Verdict(None, tuple(over))


def refusal(scope: Scope, spent_pico: int, held_pico: int = 0) -> dict[str, object]:
    """The 429 answer's body, in the providers' error shape, naming the budget, its spend,
    limit and reset (dollars as exact decimal strings)."""
    budget = scope.budget
    resets = _rfc3339(scope.period_end_ms)
    who = f" for {_principal(scope)}" if budget.per_principal else ""
    held = (f" (+${_dollars(held_pico)} held by requests in flight)"
            if held_pico else "")
    message = (f"budget {budget.name!r}{who} is exhausted: spent "
               f"${_dollars(spent_pico)}{held} of "
               f"${_dollars(budget.amount_pico)} this {budget.period} period; "
               f"it resets at {resets}")
    return {"error": {
        "type": "budget_exceeded",
        "code": "budget_exceeded",
        "message": message,
        "budget": budget.name,
        "spent": _dollars(spent_pico),
        "limit": _dollars(budget.amount_pico),
        "resets_at": resets,
    }}


def soft_header(over: Iterable[tuple[Scope, int]]) -> str:
    """``X-Costflux-Budget``: ``<name>; spent=…; limit=…`` per soft budget reached."""
    return ", ".join(
        f"{scope.budget.name}; spent={_dollars(spent)}; "
        f"limit={_dollars(scope.budget.amount_pico)}"
        for scope, spent in over)


def max_cost_pico(price: ModelPrice, input_tokens: int, output_tokens: int) -> int:
    """The most a request of at most these tokens can cost at ``price``: every input token at
    the dearest input kind (a cache write costs more than plain input) and every output token
    at the dearest output kind, of any long-context tier or service tier. Web search calls,
    priced per call, are not bounded by tokens and not included."""
    rates = _rate_sets(price)
    dearest_input = max(max(r.input, r.cached_input, r.parts.cache_write,
                            r.parts.cache_write_1h, r.parts.audio_input, r.parts.image_input)
                        for r in rates)
    dearest_output = max(max(r.output, r.parts.reasoning, r.parts.audio_output) for r in rates)
    return input_tokens * dearest_input + output_tokens * dearest_output


def _rate_sets(price: ModelPrice) -> list[ModelPrice | ModelTier]:
    prices = [price, *(tier for _name, tier in price.service_tiers)]
    if price.batch is not None:
        prices.append(price.batch)
    sets: list[ModelPrice | ModelTier] = []
    for each in prices:
        sets += [each, *each.tiers]
    return sets


def _principal(scope: Scope) -> str:
    each = scope.budget.per_principal
    assert each in PRINCIPAL_KEYS
    return f"{each.replace('_', ' ')} {scope.field}"


def _dollars(pico: int) -> str:
    """Exact decimal dollars without trailing zeros: 5, 0.5, 5.000000000001."""
    text = pico_to_exact_string(pico)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
