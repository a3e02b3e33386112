"""Savings advice: what a change would save a month, estimated from measured window rows.

The input is the window rows of every clock hour of a span (as the allocation API reads
them). The changes are applied in the order a platform team would make them, each to what
the previous ones left, so their savings add up without counting a GPU-hour twice:

1. **rightsize** - per hour and GPU pool (a model on a GPU type), keep the whole GPUs its
   busy time needs at the target utilization (at least ``min_gpus``) and scale down the rest,
   on-demand GPUs first;
2. **batching** - a pool that is lightly used by many small requests needs fewer GPU-hours
   with dynamic batching (an assumed fraction, from the seed's optimisation table);
3. **reserved** - the on-demand GPUs still running in every hour (the baseline) at the
   reserved price;
4. **spot** - the rest of the on-demand GPU-hours (the burst) at the spot price;
5. **routing** - a share of an expensive model's short-output requests sent to a cheaper
   model (one named in ``routes``, else the closest cheaper model already in use), repriced
   at that model's rates for the same tokens.

The savings the caches already achieved are reported apart (they are in today's cost): the
prompt cache's (cached input tokens billed at the cached rate) and the semantic cache's
(requests ``costflux cache`` answered without calling the model, priced at the model's rates
at each hit's time), per model, the semantic cache's also per team. Semantic cache hits are
not requests the model served: the changes above count only the requests that reached it.
Every figure is exact (fractions of a dollar) until it is shown; a month is
``month_days`` days, and a span's figures scale to a month by its measured length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction

from costflux.core.allocation import UNALLOCATED, TimeRange
from costflux.core.gpu import UNITS_PER_PICO, cost_units, price_of_rates
from costflux.core.money import PICO_PER_DOLLAR, pico_to_dollars, pico_to_exact_string
from costflux.core.pricing import ModelPrice
from costflux.core.rows import WindowRows
from costflux.core.signals import DAY_MS, UNITS_PER_DOLLAR
from costflux.core.spike import HOUR_MS

__all__ = ["KINDS", "Advice", "AdviceResult", "Assumptions", "Estimate", "advise",
           "measurable"]

#: The changes, in the order they are applied.
KINDS = ("rightsize", "batching", "reserved", "spot", "routing")
Rows = WindowRows


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What the estimates assume; every one is stated next to the figures it shapes."""

    month_days: int = 30
    target_utilization_pct: Fraction = Fraction(70)
    min_gpus: int = 1
    batching_max_utilization_pct: Fraction = Fraction(50)
    batching_max_tokens_per_request: int = 1000
    batching_min_requests_per_s: Fraction = Fraction(1, 2)
    batching_saving_pct: Fraction = Fraction(30)
    routing_max_output_tokens: int = 300
    routing_share_pct: Fraction = Fraction(50)
    routes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Estimate:
    """Monthly dollars before and after one change, exactly."""

    before: Fraction
    after: Fraction

    @property
    def saving(self) -> Fraction:
        return self.before - self.after


@dataclass(frozen=True, slots=True)
class Advice:
    kind: str
    target: str  # what it applies to: a pool "model on gpu_type", or a model
    estimate: Estimate
    evidence: Mapping[str, object]
    assumptions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AdviceResult:
    measured: TimeRange | None  # the hours that held data; None when there was none
    monthly_factor: Fraction  # a month / the measured span
    current_monthly: Fraction  # token + GPU cost a month at the measured rate
    advice: tuple[Advice, ...]  # in KINDS order, then by saving, largest first
    #: by model: the prompt cache's saving a month, then the semantic cache's
    cache_achieved: tuple[Advice, ...]


@dataclass(slots=True)
class _PoolHour:
    """One GPU pool in one hour: GPU time, and its cost in GPU units (pico-$ x ms / h)."""

    gpu_ms: int = 0
    busy_ms: int = 0
    units: int = 0  # at the tier each GPU ran at
    od_ms: int = 0  # on-demand GPU time, and its cost at each tier
    od_units: int = 0
    od_spot_units: int = 0
    od_reserved_units: int = 0


@dataclass(slots=True)
class _ModelUse:
    cost_pico: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    requests: int = 0  # the requests the model served (semantic cache hits are apart)
    cache_saving_pico: int = 0
    #: team -> [semantic cache hits, the cost they avoided in pico-dollars]
    semantic_by_team: dict[str, list[int]] = field(default_factory=dict)


Pool = tuple[str, str]  # (model, gpu_type)


def measurable(
    span: TimeRange, earliest_ms: int | None, newest_ms: int | None, finest_s: int
) -> TimeRange | None:
    """The part of ``span`` that data can cover: from the oldest window held to the finest
    window holding the newest event. A month is extrapolated from this length, so a window
    reaching past the newest event (or before the first) must not dilute the rate."""
    if earliest_ms is None or newest_ms is None:
        return None
    finest_ms = finest_s * 1000
    start = max(span.start_ms, earliest_ms)
    end = min(span.end_ms, newest_ms - newest_ms % finest_ms + finest_ms)
    return TimeRange(start, end) if start < end else None


def advise(
    hours: Sequence[tuple[TimeRange, Iterable[Rows]]],
    price_of: Callable[[str], ModelPrice | None],
    assumptions: Assumptions = Assumptions(),
) -> AdviceResult:
    """Advice from the rows of consecutive clock hours (the first and last may be partial).

    ``price_of`` gives a model's current price (routing reprices tokens at it).
    """
    pools: dict[Pool, dict[int, _PoolHour]] = {}
    usage: dict[str, _ModelUse] = {}
    used_hours = [i for i, (_, rows) in enumerate(hours) if _read_hour(i, rows, pools, usage)]
    if not used_hours:
        return AdviceResult(None, Fraction(0), Fraction(0), (), ())
    lengths = {i: hours[i][0].end_ms - hours[i][0].start_ms
               for i in range(used_hours[0], used_hours[-1] + 1)}
    measured = TimeRange(hours[used_hours[0]][0].start_ms, hours[used_hours[-1]][0].end_ms)
    factor = Fraction(assumptions.month_days * DAY_MS, measured.end_ms - measured.start_ms)
    token_pico = sum(u.cost_pico for u in usage.values())
    gpu_units = sum(h.units for by_hour in pools.values() for h in by_hour.values())
    current = factor * (Fraction(token_pico, PICO_PER_DOLLAR)
                        + Fraction(gpu_units, UNITS_PER_DOLLAR))
    found: dict[str, list[Advice]] = {kind: [] for kind in KINDS}
    for pool, by_hour in sorted(pools.items()):
        for advice in _pool_advice(pool, by_hour, lengths, usage.get(pool[0]), factor,
                                   assumptions):
            found[advice.kind].append(advice)
    found["routing"] = _routing(usage, price_of, factor, assumptions)
    ordered = tuple(a for kind in KINDS
                    for a in sorted(found[kind], key=lambda a: (-a.estimate.saving, a.target)))
    achieved = _cache_achieved(usage, factor) + _semantic_cache_achieved(usage, factor)
    return AdviceResult(measured, factor, current, ordered, achieved)


def _read_hour(
    index: int, rows_list: Iterable[Rows], pools: dict[Pool, dict[int, _PoolHour]],
    usage: dict[str, _ModelUse],
) -> bool:
    """Add one hour's rows to the pools and models; whether the hour held any."""
    seen = False
    for rows in rows_list:
        seen = seen or bool(rows)
        for (_node, gpu_type, tier, _ns, model, _team, rates), gpu in rows.gpu.items():
            price = price_of_rates(rates)
            hour = pools.setdefault((model, gpu_type), {}).setdefault(index, _PoolHour())
            hour.gpu_ms += gpu.gpu_ms
            hour.busy_ms += gpu.busy_ms
            hour.units += cost_units(gpu.gpu_ms, price, tier)
            if tier == "on_demand":
                hour.od_ms += gpu.gpu_ms
                hour.od_units += cost_units(gpu.gpu_ms, price, "on_demand")
                hour.od_spot_units += cost_units(gpu.gpu_ms, price, "spot")
                hour.od_reserved_units += cost_units(gpu.gpu_ms, price, "reserved_1y")
        for dims, sums in rows.usage.items():
            use = usage.setdefault(dims[0], _ModelUse())
            use.cost_pico += sums.cost_pico
            use.input_tokens += sums.input_tokens
            use.output_tokens += sums.output_tokens
            use.cached_input_tokens += sums.cached_input_tokens
            use.requests += sums.served_requests
            use.cache_saving_pico += sums.cache_saving_pico
            if sums.semantic_cache_hits:
                team = use.semantic_by_team.setdefault(dims[1] or UNALLOCATED, [0, 0])
                team[0] += sums.semantic_cache_hits
                team[1] += sums.semantic_saving_pico
    return seen


def _pool_advice(
    pool: Pool, by_hour: dict[int, _PoolHour], lengths: dict[int, int],
    use: _ModelUse | None, factor: Fraction, assumptions: Assumptions,
) -> list[Advice]:
    """Rightsize, batching, reserved and spot for one pool, each on what the last left."""
    target = f"{pool[0] or '(no model)'} on {pool[1]}"
    measured_ms = sum(lengths.values())
    gpu_ms = sum(h.gpu_ms for h in by_hour.values())
    busy_ms = sum(h.busy_ms for h in by_hour.values())
    out: list[Advice] = []

    # 1. rightsize: surplus GPU time per hour, taken from on-demand GPUs first
    surplus_units, after_rightsize, kept_od_ms, needed_ms = _rightsize(
        by_hour, lengths, assumptions)
    pool_units = sum(h.units for h in by_hour.values())
    if surplus_units:
        out.append(Advice(
            "rightsize", target,
            _monthly(pool_units, pool_units - surplus_units, factor),
            {"gpuHours": _hours(gpu_ms), "utilizationPct": _pct(busy_ms, gpu_ms),
             "averageGpus": float(Fraction(gpu_ms, measured_ms)),
             "averageGpusNeeded": float(Fraction(min(needed_ms, gpu_ms), measured_ms))},
            (f"keep, each hour, the whole GPUs the busy time needs at "
             f"{_num(assumptions.target_utilization_pct)}% utilization, at least "
             f"{assumptions.min_gpus}; an autoscaler (HPA/Karpenter) removes the rest "
             "within the hour, on-demand GPUs first",
             "GPUs of a pool are interchangeable; cold starts are not costed"),
        ))

    # 2. batching: many small requests on lightly used GPUs
    batch = _batching_fraction(gpu_ms, busy_ms, use, measured_ms, assumptions)
    if batch and after_rightsize:
        assert use is not None  # _batching_fraction is 0 without requests
        out.append(Advice(
            "batching", target,
            _monthly(after_rightsize, after_rightsize * (1 - batch), factor),
            {"utilizationPct": _pct(busy_ms, gpu_ms),
             "tokensPerRequest": float(Fraction(use.input_tokens + use.output_tokens,
                                                use.requests)),
             "requestsPerSecond": float(Fraction(use.requests * 1000, measured_ms))},
            (f"dynamic batching (vLLM continuous batching) cuts the GPU-hours needed by "
             f"{_num(assumptions.batching_saving_pct)}% (the seed's table: 20-40%)",
             f"applies below {_num(assumptions.batching_max_utilization_pct)}% utilization "
             f"with requests under {assumptions.batching_max_tokens_per_request} tokens at "
             f"{_num(assumptions.batching_min_requests_per_s)}/s or more"),
        ))
    keep = 1 - batch

    # 3 and 4. reserve the on-demand baseline, move the on-demand burst to spot
    remaining = {i: kept_od_ms.get(i, Fraction(0)) * keep for i in lengths}
    baseline = min(_floor(remaining[i] / lengths[i]) for i in lengths)
    reserved = [Fraction(0), Fraction(0)]  # before, after (GPU units)
    spot = [Fraction(0), Fraction(0)]
    for index, hour in by_hour.items():
        if not hour.od_ms:
            continue
        base_ms, burst_ms = baseline * lengths[index], remaining[index] - baseline * lengths[index]
        reserved[0] += base_ms * Fraction(hour.od_units, hour.od_ms)
        reserved[1] += base_ms * Fraction(hour.od_reserved_units, hour.od_ms)
        spot[0] += burst_ms * Fraction(hour.od_units, hour.od_ms)
        spot[1] += burst_ms * Fraction(hour.od_spot_units, hour.od_ms)
    if reserved[0] > reserved[1]:
        out.append(Advice(
            "reserved", target, _monthly(reserved[0], reserved[1], factor),
            {"baselineGpus": baseline},
            (f"{baseline} on-demand GPU(s) ran in every hour measured (after the changes "
             "above); a 1-year reservation at pricing.yaml's reserved_1y price covers them",
             "the measured span is representative of the year the reservation runs"),
        ))
    if spot[0] > spot[1]:
        out.append(Advice(
            "spot", target, _monthly(spot[0], spot[1], factor),
            {"burstGpuHours": float(sum(remaining.values(), Fraction(0)) / HOUR_MS
                                    - baseline * Fraction(measured_ms, HOUR_MS))},
            ("the on-demand GPU-hours above the baseline run on spot at pricing.yaml's "
             "spot price",
             "replicas are stateless behind a load balancer, so an interruption costs a "
             "retry; spot capacity is available"),
        ))
    return out


def _rightsize(
    by_hour: dict[int, _PoolHour], lengths: dict[int, int], assumptions: Assumptions,
) -> tuple[Fraction, Fraction, dict[int, Fraction], int]:
    """GPU units scaled down, GPU units kept, on-demand ms kept per hour, and GPU ms needed:
    each hour keeps ceil(busy / (target x hour)) GPUs, at least ``min_gpus``; the surplus
    comes off on-demand GPUs first, each part priced at its own mean rate."""
    surplus_units, kept_units = Fraction(0), Fraction(0)
    kept_od_ms: dict[int, Fraction] = {}
    needed_ms = 0
    for index, hour in by_hour.items():
        length = lengths[index]
        gpus = max(assumptions.min_gpus, _ceil(
            Fraction(100 * hour.busy_ms) / (assumptions.target_utilization_pct * length)))
        needed_ms += gpus * length
        surplus = max(0, hour.gpu_ms - gpus * length)
        from_od = min(surplus, hour.od_ms)
        from_rest = surplus - from_od
        removed = Fraction(0)
        if from_od:
            removed += Fraction(hour.od_units * from_od, hour.od_ms)
        if from_rest:
            removed += Fraction((hour.units - hour.od_units) * from_rest,
                                hour.gpu_ms - hour.od_ms)
        surplus_units += removed
        kept_units += hour.units - removed
        kept_od_ms[index] = Fraction(hour.od_ms - from_od)
    return surplus_units, kept_units, kept_od_ms, needed_ms


def _batching_fraction(
    gpu_ms: int, busy_ms: int, use: _ModelUse | None, measured_ms: int,
    assumptions: Assumptions,
) -> Fraction:
    if use is None or not use.requests or not gpu_ms:
        return Fraction(0)
    light = 100 * busy_ms < assumptions.batching_max_utilization_pct * gpu_ms
    small = (use.input_tokens + use.output_tokens
             < assumptions.batching_max_tokens_per_request * use.requests)
    many = use.requests * 1000 >= assumptions.batching_min_requests_per_s * measured_ms
    return assumptions.batching_saving_pct / 100 if light and small and many else Fraction(0)


def _routing(
    usage: dict[str, _ModelUse], price_of: Callable[[str], ModelPrice | None],
    factor: Fraction, assumptions: Assumptions,
) -> list[Advice]:
    """Short-output traffic of each model to a cheaper one, priced for the same tokens."""
    out = []
    share = assumptions.routing_share_pct / 100
    for model, use in sorted(usage.items()):
        if not use.requests or not use.cost_pico or (
                use.output_tokens > assumptions.routing_max_output_tokens * use.requests):
            continue
        own = _base_cost(price_of(model), use)
        if not own:
            continue
        candidates = ([assumptions.routes[model]] if model in assumptions.routes
                      else [m for m in usage if m != model])
        priced = [(cost, m) for m in candidates
                  if (cost := _base_cost(price_of(m), use)) is not None and cost < own]
        if not priced:
            continue
        cost, cheaper = max(priced)  # the closest cheaper model: the smallest step down
        moved = Fraction(use.cost_pico, PICO_PER_DOLLAR) * share
        out.append(Advice(
            "routing", f"{model} -> {cheaper}",
            Estimate(moved * factor, moved * Fraction(cost, own) * factor),
            {"outputTokensPerRequest": float(Fraction(use.output_tokens, use.requests)),
             "requests": use.requests, "priceRatio": float(Fraction(cost, own))},
            (f"{_num(assumptions.routing_share_pct)}% of {model}'s requests (outputs average "
             f"under {assumptions.routing_max_output_tokens} tokens) go to {cheaper}, which "
             "answers them acceptably: check with an evaluation on your traffic first",
             f"{cheaper} is priced at its current rates for the same input, cached and "
             "output tokens (long-context tiers not applied)"),
        ))
    return out


def _base_cost(price: ModelPrice | None, use: _ModelUse) -> int | None:
    if price is None:
        return None
    return replace(price, tiers=()).cost(use.input_tokens, use.output_tokens,
                                         use.cached_input_tokens)


def _cache_achieved(usage: dict[str, _ModelUse], factor: Fraction) -> tuple[Advice, ...]:
    return tuple(
        Advice(
            "prompt_cache", model,
            _monthly((use.cost_pico + use.cache_saving_pico) * UNITS_PER_PICO,
                     use.cost_pico * UNITS_PER_PICO, factor),
            {"cachedInputTokens": use.cached_input_tokens,
             "cachedSharePct": _pct(use.cached_input_tokens, use.input_tokens),
             "savedInWindow": float(Fraction(use.cache_saving_pico, PICO_PER_DOLLAR))},
            ("achieved, already in today's cost: cached input tokens billed at the cached "
             "rate instead of the input rate of the same request's tier",),
        )
        for model, use in sorted(usage.items(), key=lambda kv: (-kv[1].cache_saving_pico, kv[0]))
        if use.cache_saving_pico
    )


def _semantic_cache_achieved(
    usage: dict[str, _ModelUse], factor: Fraction
) -> tuple[Advice, ...]:
    """Per model, what the semantic cache's hits would have cost: before is the model's token
    cost with them, after is its cost as measured."""
    achieved = []
    for model, use in usage.items():
        if not use.semantic_by_team:
            continue
        hits = sum(h for h, _ in use.semantic_by_team.values())
        saved = sum(s for _, s in use.semantic_by_team.values())
        by_team = sorted(use.semantic_by_team.items(), key=lambda kv: (-kv[1][1], kv[0]))
        achieved.append(Advice(
            "semantic_cache", model,
            _monthly((use.cost_pico + saved) * UNITS_PER_PICO, use.cost_pico * UNITS_PER_PICO,
                     factor),
            {"hits": hits,
             "hitSharePct": _pct(hits, hits + use.requests),
             "savedInWindow": pico_to_dollars(saved),
             "savedInWindowExact": pico_to_exact_string(saved),
             "byTeam": {team: {"hits": h, "savedInWindow": pico_to_dollars(s),
                               "savedInWindowExact": pico_to_exact_string(s)}
                        for team, (h, s) in by_team}},
            (f"achieved, already in today's cost: {hits} requests answered by the semantic "
             f"cache instead of {model}, their tokens priced at {model}'s rates at each "
             "hit's time (costflux cache)",),
        ))
    return tuple(sorted(achieved, key=lambda a: (-a.estimate.saving, a.target)))


def _monthly(before_units: Fraction | int, after_units: Fraction | int,
             factor: Fraction) -> Estimate:
    """GPU units over the measured span -> monthly dollars."""
    scale = factor / UNITS_PER_DOLLAR
    return Estimate(before_units * scale, after_units * scale)


def _ceil(value: Fraction) -> int:
    return -(-value.numerator // value.denominator)


def _floor(value: Fraction) -> int:
    return value.numerator // value.denominator


def _hours(ms: int) -> float:
    return ms / HOUR_MS


def _pct(part: int, whole: int) -> float:
    return float(Fraction(100 * part, whole)) if whole else 0.0


def _num(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"
