"""Usage events from an inference server's cumulative ``/metrics`` counters.

vLLM and TGI publish running totals (prompt tokens, generated tokens, finished requests), not
one record per request. The bridge scrapes them every interval and turns what each total grew
by into usage events, following four rules:

* **Baseline.** The first page only sets the starting point: what a server counted before the
  bridge started is not this run's to bill, and emitting it would be a spike.
* **Increase.** Each series grows by ``current - previous``; a value that went down means the
  server restarted (or the counter reset) and the whole current value is the growth since
  then, as Prometheus' ``increase()`` counts it. A changed ``process_start_time_seconds``
  marks every series as reset, even one that grew past its old value. A series that was not
  on the previous page grew from zero; one missing from the current page keeps its last value
  (a later page is compared with it), and a failed scrape changes nothing, so the next good
  page's increase covers the whole gap.
* **Requests carry the tokens.** An interval in which N requests finished gives N events,
  with the interval's tokens split among them exactly (largest remainder). Servers count
  tokens while a request runs (vLLM counts the prompt at its first token and every generated
  token as it comes) but count the request when it ends, so an interval can have tokens and no
  finished request: those tokens are carried to the next interval that has one, never
  dropped and never billed to a request that does not exist. The carry is in memory: tokens of
  requests still running when the bridge stops are not emitted (the next run starts from a
  fresh baseline).
* **Cached tokens ride with the input.** They are part of the input tokens, so an interval
  bills at most its input tokens as cached; an excess (possible only with vLLM's older
  scheduler-side ``prefix_cache_hits`` counter, which counts a prompt when it is scheduled and
  again after a preemption) is dropped, which bills the full input price, never less.

Event time is the scrape time, so windows are accurate to one scrape interval. Event ids are
``bridge:<source>:<model>:<scrape ms>:<i>``: a batch sent again (after a broker error) carries
the same ids and counts once downstream.

The same page also says how many requests each model has waiting for a place in the running
batch and how many are in it (vLLM's ``vllm:num_requests_waiting`` / ``_running``, TGI's
``tgi_queue_size`` / ``tgi_batch_current_size``): gauges, read as they stand
(``read_request_queues``), for an autoscaler to act on. Nothing is computed across pages.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol

from costflux.core.errors import InputError
from costflux.core.gpu import split_in_proportion
from costflux.schemas._types import MAX_ID_LENGTH, from_epoch_ms

__all__ = [
    "SERVER_KINDS",
    "BridgeError",
    "CounterBridge",
    "CounterPage",
    "EventTemplate",
    "FlagRequired",
    "Interval",
    "MetricSample",
    "NoInferenceMetrics",
    "Observation",
    "RequestQueue",
    "ServerKind",
    "Tally",
    "page_increase",
    "read_counters",
    "read_request_queues",
    "usage_events",
]

ServerKind = Literal["vllm", "tgi"]
SERVER_KINDS: Final[tuple[ServerKind, ...]] = ("vllm", "tgi")

#: Counter (sample name without ``_total``) -> what it counts. TGI's token metrics are
#: histograms: their ``_sum`` is the tokens and ``_count`` the requests observed. TGI observes
#: the input length when a request is validated, the generated tokens when it succeeds.
_COUNTERS: Final[Mapping[ServerKind, Mapping[str, str]]] = {
    "vllm": {
        "vllm:prompt_tokens": "input_tokens",
        "vllm:generation_tokens": "output_tokens",
        # Counted with the prompt when its prefill ends, so it never exceeds prompt_tokens;
        # vLLM >= 0.11. Older servers only have the scheduler-side hits below.
        "vllm:prompt_tokens_cached": "cached_tokens",
        "vllm:prefix_cache_hits": "cache_hit_tokens",
        "vllm:request_success": "requests",  # every finished_reason, see _FAILED_REASONS
    },
    "tgi": {
        "tgi_request_input_length_sum": "input_tokens",
        "tgi_request_generated_tokens_sum": "output_tokens",
        "tgi_request_generated_tokens_count": "requests",
        "tgi_request_failure": "failed_requests",
    },
}
#: Gauge -> which part of the server's queue it counts. vLLM: requests waiting for the
#: scheduler to admit them, and requests in the running batch (one series per engine under
#: data parallelism, summed per model). TGI: the router's queue and the batch being generated.
_QUEUE_GAUGES: Final[Mapping[ServerKind, Mapping[str, str]]] = {
    "vllm": {"vllm:num_requests_waiting": "waiting", "vllm:num_requests_running": "running"},
    "tgi": {"tgi_queue_size": "waiting", "tgi_batch_current_size": "running"},
}
#: Names that tell a kind apart even on a page where its token counters are missing.
_MARKERS: Final[Mapping[ServerKind, frozenset[str]]] = {
    "vllm": frozenset(_COUNTERS["vllm"]),
    "tgi": frozenset({*_COUNTERS["tgi"], "tgi_request_count"}),
}
#: vLLM finished_reason values of requests that ended without a normal answer; they used
#: tokens all the same, so they are events with status "error".
_FAILED_REASONS: Final = frozenset({"abort", "error"})
_PROCESS_START: Final = "process_start_time_seconds"
_VLLM_MODEL_LABEL: Final = "model_name"

#: One counter series on a page: (model, metric name without _total, its labels sorted).
SeriesKey = tuple[str, str, tuple[tuple[str, str], ...]]


class BridgeError(InputError):
    """A metrics page cannot be turned into token counters."""


class NoInferenceMetrics(BridgeError):
    """The page has no vLLM or TGI token counters."""


class FlagRequired(BridgeError):
    """The page cannot be read without a flag: --model (no model named) or --kind (both)."""


class MetricSample(Protocol):
    """One sample of a parsed exposition page (``prometheus_client.samples.Sample`` fits)."""

    @property
    def name(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def value(self) -> float: ...


@dataclass(frozen=True, slots=True)
class CounterPage:
    """The token and request counters of one scrape, per series, as integers."""

    kind: ServerKind
    counters: Mapping[SeriesKey, int]
    process_start_s: float | None = None


@dataclass(frozen=True, slots=True)
class Tally:
    """Tokens and finished requests of one model: an interval's increase, or a carry.

    >>> Tally(input_tokens=5, requests=1) + Tally(input_tokens=2, output_tokens=3)
    Tally(input_tokens=7, output_tokens=3, cached_input_tokens=0, requests=1, failed_requests=0)
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    requests: int = 0
    failed_requests: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_input_tokens + other.cached_input_tokens,
            self.requests + other.requests,
            self.failed_requests + other.failed_requests,
        )

    @property
    def finished(self) -> int:
        """Requests that ended, whatever their outcome."""
        return self.requests + self.failed_requests

    @property
    def has_tokens(self) -> bool:
        """Whether any token is counted (a carry worth keeping)."""
        return bool(self.input_tokens or self.output_tokens or self.cached_input_tokens)


@dataclass(frozen=True, slots=True)
class RequestQueue:
    """Requests of one model on a server at one scrape: waiting for a place, and running.

    None: the page does not report it (an older server, an unreadable value), never a
    made-up zero.
    """

    waiting: int | None = None
    running: int | None = None


@dataclass(frozen=True, slots=True)
class Interval:
    """What two pages of one server say happened between them."""

    growth: Mapping[str, Tally]
    #: Series whose value went down (counted from zero), e.g. 'vllm:prompt_tokens{...}'.
    resets: tuple[str, ...]
    #: The server's process start time changed (or it became another kind of server).
    restarted: bool


@dataclass(frozen=True, slots=True)
class EventTemplate:
    """What every event of one bridge carries besides its counts."""

    #: Names the scraped server in event ids; unique per server (e.g. pod + host:port).
    source: str
    deployment: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Observation:
    """The outcome of one page: events to send and what to report."""

    events: list[dict[str, Any]]
    baseline: bool = False
    resets: tuple[str, ...] = ()
    restarted: bool = False
    #: Cached tokens over the interval's input, not billed as cached (see the module doc).
    cached_capped: int = 0
    #: Per model, tokens waiting for a finished request.
    carried: Mapping[str, Tally] = field(default_factory=dict)


def read_counters(
    samples: Iterable[MetricSample],
    *,
    kind: ServerKind | None = None,
    model: str | None = None,
) -> CounterPage:
    """Pick the token and request counters out of a parsed page.

    ``kind`` is told from the metric names when not given; ``model`` overrides vLLM's
    ``model_name`` label and is required for TGI, whose metrics name no model.

    >>> from types import SimpleNamespace as S
    >>> page = read_counters([S(name="vllm:prompt_tokens_total",
    ...                         labels={"model_name": "m"}, value=5.0)])
    >>> page.kind, page.counters
    ('vllm', {('m', 'vllm:prompt_tokens', (('model_name', 'm'),)): 5})
    """
    found = list(samples)
    if kind is None:
        kind = _detect_kind(found)
    if kind == "tgi" and model is None:
        raise FlagRequired(
            "TGI's /metrics names no model: pass --model with the model's pricing key"
        )
    wanted = _COUNTERS[kind]
    counters: dict[SeriesKey, int] = {}
    process_start: float | None = None
    for sample in found:
        if sample.name == _PROCESS_START:
            process_start = sample.value
            continue
        metric = _base_name(sample.name)
        if metric not in wanted:
            continue
        key = (_owner(sample, model), metric, tuple(sorted(sample.labels.items())))
        counters[key] = counters.get(key, 0) + _count(sample)
    return CounterPage(kind, counters, process_start)


def read_request_queues(
    samples: Iterable[MetricSample], *, kind: ServerKind, model: str | None = None
) -> dict[str, RequestQueue]:
    """Each model's waiting and running requests on a parsed page of a ``kind`` server.

    ``model`` as in ``read_counters``. Series of one model are summed (vLLM has one per engine
    under data parallelism). A gauge that is not a finite count >= 0 is left out rather than
    failing the scrape: the usage events of the page do not depend on it.

    >>> from types import SimpleNamespace as S
    >>> read_request_queues([S(name="vllm:num_requests_waiting",
    ...                        labels={"model_name": "m"}, value=3.0)], kind="vllm")
    {'m': RequestQueue(waiting=3, running=None)}
    """
    wanted = _QUEUE_GAUGES[kind]
    counts: dict[str, dict[str, int]] = {}
    for sample in samples:
        part = wanted.get(sample.name)
        if part is None:
            continue
        owner = _owner(sample, model)
        value = sample.value
        if not math.isfinite(value) or value < 0:
            continue
        parts = counts.setdefault(owner, {})
        parts[part] = parts.get(part, 0) + round(value)
    return {
        owner: RequestQueue(waiting=parts.get("waiting"), running=parts.get("running"))
        for owner, parts in sorted(counts.items())
    }


def page_increase(previous: CounterPage, current: CounterPage) -> Interval:
    """Each model's growth from ``previous`` to ``current``, with Prometheus reset semantics.

    >>> before = CounterPage("vllm", {("m", "vllm:prompt_tokens", ()): 100})
    >>> page_increase(before, CounterPage("vllm", {("m", "vllm:prompt_tokens", ()): 130})).growth
    {'m': Tally(input_tokens=30, output_tokens=0, cached_input_tokens=0, requests=0, failed_requests=0)}
    >>> after_restart = page_increase(before, CounterPage("vllm", {("m", "vllm:prompt_tokens", ()): 8}))
    >>> after_restart.growth["m"].input_tokens, after_restart.resets
    (8, ('vllm:prompt_tokens{}',))
    """  # noqa: E501
    restarted = previous.kind != current.kind or (
        previous.process_start_s is not None
        and current.process_start_s is not None
        and previous.process_start_s != current.process_start_s
    )
    fields: dict[str, dict[str, int]] = {}
    resets = []
    for key, value in current.counters.items():
        model, metric, labels = key
        before = 0 if restarted else previous.counters.get(key, 0)
        if value < before:
            resets.append(f"{metric}{{{','.join(f'{k}={v!r}' for k, v in labels)}}}")
            before = 0
        name = _field(current.kind, metric, dict(labels))
        counts = fields.setdefault(model, {})
        counts[name] = counts.get(name, 0) + value - before
    exact_cache = {model for model, metric, _ in current.counters if metric in _EXACT_CACHE}
    growth = {
        model: Tally(
            input_tokens=counts.get("input_tokens", 0),
            output_tokens=counts.get("output_tokens", 0),
            cached_input_tokens=counts.get(
                "cached_tokens" if model in exact_cache else "cache_hit_tokens", 0
            ),
            requests=counts.get("requests", 0),
            failed_requests=counts.get("failed_requests", 0),
        )
        for model, counts in sorted(fields.items())
    }
    return Interval(growth, tuple(resets), restarted)


def usage_events(
    model: str, pending: Tally, end_ms: int, template: EventTemplate
) -> tuple[list[dict[str, Any]], Tally, int]:
    """Split ``pending`` among its finished requests: (events, carry, cached tokens capped).

    No finished request: no event, everything is carried. Otherwise every token is emitted
    (nothing carried) and the parts sum to the pending counts exactly.

    >>> events, carry, _ = usage_events("m", Tally(10, 4, 0, 3), 1_000, EventTemplate("pod"))
    >>> [(e["event_id"], e["input_tokens"], e["output_tokens"]) for e in events]
    [('bridge:pod:m:1000:0', 4, 2), ('bridge:pod:m:1000:1', 3, 1), ('bridge:pod:m:1000:2', 3, 1)]
    >>> usage_events("m", Tally(10, 4), 1_000, EventTemplate("pod"))[1:]
    (Tally(input_tokens=10, output_tokens=4, cached_input_tokens=0, requests=0, failed_requests=0), 0)
    """  # noqa: E501
    count = pending.finished
    if count == 0:
        return [], pending, 0
    cached = min(pending.cached_input_tokens, pending.input_tokens)
    equal = [1] * count
    # Equal weights put the remainders on the first events for every field, so an event's
    # cached share never exceeds its input share when cached <= input in total.
    inputs = split_in_proportion(pending.input_tokens, equal)
    outputs = split_in_proportion(pending.output_tokens, equal)
    cached_parts = split_in_proportion(cached, equal)
    prefix = _id_prefix(template.source, model)
    ts = from_epoch_ms(end_ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    events = []
    for i in range(count):
        event: dict[str, Any] = {
            "event_id": f"{prefix}:{end_ms}:{i}",
            "ts": ts,
            "model": model,
            "input_tokens": inputs[i],
            "output_tokens": outputs[i],
            "cached_input_tokens": cached_parts[i],
            "status": "ok" if i < pending.requests else "error",
            "labels": dict(template.labels),
        }
        if template.deployment is not None:
            event["deployment"] = template.deployment
        events.append(event)
    return events, Tally(), pending.cached_input_tokens - cached


class CounterBridge:
    """Successive pages of one server in, usage events out (no I/O: the caller scrapes).

    >>> bridge = CounterBridge(EventTemplate("pod-1"))
    >>> def page(tokens, requests):
    ...     return CounterPage("vllm", {("m", "vllm:prompt_tokens", ()): tokens,
    ...                                 ("m", "vllm:request_success", ()): requests})
    >>> bridge.observe(page(100, 1), 1_000).baseline
    True
    >>> bridge.observe(page(130, 1), 2_000).carried["m"].input_tokens
    30
    >>> [e["input_tokens"] for e in bridge.observe(page(150, 3), 3_000).events]
    [25, 25]
    """

    def __init__(self, template: EventTemplate) -> None:
        self._template = template
        self._last: CounterPage | None = None
        self._carried: dict[str, Tally] = {}

    @property
    def carried(self) -> Mapping[str, Tally]:
        """Per model, tokens counted but not yet emitted (no request has finished since)."""
        return dict(self._carried)

    def observe(self, page: CounterPage, end_ms: int) -> Observation:
        """Take the page scraped at ``end_ms``; return the events of its interval."""
        if self._last is None:
            self._last = page
            return Observation([], baseline=True)
        interval = page_increase(self._last, page)
        if interval.restarted:
            self._last = page
        else:
            # Series missing from this page keep their last value, to be compared later.
            self._last = replace(page, counters={**self._last.counters, **page.counters})
        events: list[dict[str, Any]] = []
        capped = 0
        for model, growth in interval.growth.items():
            pending = self._carried.pop(model, Tally()) + growth
            emitted, carry, dropped = usage_events(model, pending, end_ms, self._template)
            events += emitted
            capped += dropped
            if carry.has_tokens:
                self._carried[model] = carry
        return Observation(
            events,
            resets=interval.resets,
            restarted=interval.restarted,
            cached_capped=capped,
            carried=self.carried,
        )


_EXACT_CACHE: Final = frozenset(
    metric for metric, name in _COUNTERS["vllm"].items() if name == "cached_tokens"
)


def _base_name(sample_name: str) -> str:
    # Counters are matched without `_total`: exporters differ on it (TGI's Rust exporter
    # writes tgi_request_count, prometheus_client's parser reports tgi_request_count_total).
    return sample_name.removesuffix("_total")


def _detect_kind(samples: list[MetricSample]) -> ServerKind:
    names = {_base_name(sample.name) for sample in samples}
    kinds = [kind for kind in SERVER_KINDS if names & _MARKERS[kind]]
    if not kinds:
        raise NoInferenceMetrics(
            "no vLLM (vllm:prompt_tokens_total, ...) or TGI (tgi_request_count, ...) counters "
            "on the page: is the URL the inference server's /metrics?"
        )
    if len(kinds) > 1:
        raise FlagRequired("the page has both vLLM and TGI metrics: pass --kind vllm or tgi")
    return kinds[0]


def _owner(sample: MetricSample, model: str | None) -> str:
    owner = model if model is not None else sample.labels.get(_VLLM_MODEL_LABEL)
    if not owner:
        raise FlagRequired(
            f"{sample.name} has no {_VLLM_MODEL_LABEL} label: pass --model with the "
            "model's pricing key"
        )
    return owner


def _count(sample: MetricSample) -> int:
    value = sample.value
    if not math.isfinite(value) or value < 0:
        raise BridgeError(f"{sample.name}{sample.labels} is {value}, not a count")
    return round(value)


def _field(kind: ServerKind, metric: str, labels: Mapping[str, str]) -> str:
    name = _COUNTERS[kind][metric]
    if name == "requests" and labels.get("finished_reason") in _FAILED_REASONS:
        return "failed_requests"
    return name


def _id_prefix(source: str, model: str) -> str:
    prefix = f"bridge:{source}:{model}"
    # Room for ":<13-digit ms>:<index>"; a longer source or model is hashed to fit the id.
    if len(prefix) + 32 > MAX_ID_LENGTH:
        digest = hashlib.sha256(f"{source}\0{model}".encode()).hexdigest()[:32]
        prefix = f"bridge:{digest}"
    return prefix
