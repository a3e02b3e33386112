"""The pure bridge: the real vLLM page's counters, increases, resets, carry-over, TGI."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.core.bridge import (
    CounterBridge,
    CounterPage,
    EventTemplate,
    FlagRequired,
    NoInferenceMetrics,
    RequestQueue,
    Tally,
    page_increase,
    read_counters,
    read_request_queues,
    usage_events,
)
from costflux.schemas._types import MAX_ID_LENGTH
from costflux.schemas.usage import UsageEvent
from costflux.streams.bridge import parse_metrics_page
from tests.bridge.pages import FIXTURE_VALUES, MODEL, VLLM_TEXT, grown, vllm_page

TEMPLATE = EventTemplate("pod-a/127.0.0.1:8000", "vllm-opt", {"team": "search"})


def page_of(text: str, **options: Any) -> CounterPage:
    return read_counters(parse_metrics_page(text), **options)


def counter(page: CounterPage, metric: str, **labels: str) -> int:
    """The value of the series of ``metric`` whose labels include ``labels``."""
    found = [value for (_, name, series_labels), value in page.counters.items()
             if name == metric and labels.items() <= dict(series_labels).items()]
    assert len(found) == 1, (metric, labels)
    return found[0]


def observe_all(pages: list[str], bridge: CounterBridge | None = None,
                **options: Any) -> list[list[dict[str, Any]]]:
    bridge = bridge or CounterBridge(TEMPLATE)
    return [bridge.observe(page_of(text, **options), 1_000 * (i + 1)).events
            for i, text in enumerate(pages)]


def totals(events: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    return (len(events), sum(e["input_tokens"] for e in events),
            sum(e["output_tokens"] for e in events),
            sum(e["cached_input_tokens"] for e in events))


def test_the_real_vllm_page_gives_its_counters() -> None:
    # The fixture's values as its text states them (read by regex in tests.bridge.pages).
    assert FIXTURE_VALUES == {"prompt": 5.0, "generation": 7.0, "success": 1.0, "hits": 64.0,
                              "cached": 64.0, "start": 1.7181405583e9, "waiting": 0.0,
                              "running": 0.0}
    page = page_of(VLLM_TEXT)
    assert page.kind == "vllm"
    assert page.process_start_s == FIXTURE_VALUES["start"]
    assert {model for model, _, _ in page.counters} == {MODEL}
    assert counter(page, "vllm:prompt_tokens") == FIXTURE_VALUES["prompt"]
    assert counter(page, "vllm:generation_tokens") == FIXTURE_VALUES["generation"]
    assert counter(page, "vllm:request_success",
                   finished_reason="length") == FIXTURE_VALUES["success"]
    assert counter(page, "vllm:prefix_cache_hits") == FIXTURE_VALUES["hits"]
    assert counter(page, "vllm:prompt_tokens_cached") == FIXTURE_VALUES["cached"]
    # Histograms, gauges and other counters of the page are not read.
    assert len(page.counters) == 5


def test_the_first_page_is_a_baseline_not_a_spike() -> None:
    bridge = CounterBridge(TEMPLATE)
    first = bridge.observe(page_of(VLLM_TEXT), 1_000)
    assert first.baseline and first.events == [] and first.carried == {}
    # The same page again: nothing happened in between.
    assert bridge.observe(page_of(VLLM_TEXT), 2_000).events == []


def test_growth_becomes_one_event_per_finished_request_summing_to_the_growth() -> None:
    _, events = observe_all([VLLM_TEXT, grown(prompt=1000, generation=301, success=3,
                                              cached=200, hits=999)])
    assert totals(events) == (3, 1000, 301, 200)
    assert [e["input_tokens"] for e in events] == [334, 333, 333]
    assert [e["output_tokens"] for e in events] == [101, 100, 100]
    assert [e["cached_input_tokens"] for e in events] == [67, 67, 66]
    for i, event in enumerate(events):
        UsageEvent.model_validate(event)
        assert event["event_id"] == f"bridge:pod-a/127.0.0.1:8000:{MODEL}:2000:{i}"
        assert event["ts"] == "1970-01-01T00:00:02.000Z"
        assert (event["model"], event["deployment"], event["labels"]) == (
            MODEL, "vllm-opt", {"team": "search"})
        assert event["status"] == "ok"


def test_the_same_pages_give_the_same_event_ids() -> None:
    pages = [VLLM_TEXT, grown(prompt=10, generation=4, success=2)]
    assert observe_all(pages) == observe_all(pages)


def test_prefix_cache_hits_stand_in_when_the_exact_cached_counter_is_missing() -> None:
    older = "\n".join(line for line in VLLM_TEXT.splitlines()
                      if "vllm:prompt_tokens_cached" not in line)
    grown_older = "\n".join(line for line in grown(prompt=100, success=1, hits=40).splitlines()
                            if "vllm:prompt_tokens_cached" not in line)
    _, events = observe_all([older, grown_older])
    assert totals(events)[1:] == (100, 0, 40)


def test_cached_tokens_over_the_input_are_capped_not_carried() -> None:
    bridge = CounterBridge(TEMPLATE)
    bridge.observe(page_of(VLLM_TEXT), 1_000)
    observation = bridge.observe(page_of(grown(prompt=10, success=2, cached=25)), 2_000)
    assert totals(observation.events)[1:] == (10, 0, 10)
    assert all(e["cached_input_tokens"] <= e["input_tokens"] for e in observation.events)
    assert observation.cached_capped == 15 and observation.carried == {}


def test_tokens_without_a_finished_request_carry_to_the_next_one() -> None:
    bridge = CounterBridge(TEMPLATE)
    running = [grown(prompt=100, generation=10), grown(prompt=150, generation=30, cached=20)]
    done = grown(prompt=180, generation=45, cached=20, success=2)
    observations = [bridge.observe(page_of(text), 1_000 * i)
                    for i, text in enumerate([VLLM_TEXT, *running, done])]
    assert [o.events for o in observations[:3]] == [[], [], []]
    assert observations[2].carried == {MODEL: Tally(150, 30, 20)}
    assert totals(observations[3].events) == (2, 180, 45, 20)
    assert observations[3].carried == {} and bridge.carried == {}


def test_a_counter_that_went_down_counts_from_zero() -> None:
    before = grown(prompt=500, generation=50, success=5)
    after_restart = vllm_page(prompt=12, generation=3, success=1)  # lower than before
    bridge = CounterBridge(TEMPLATE)
    bridge.observe(page_of(VLLM_TEXT), 1_000)
    assert totals(bridge.observe(page_of(before), 2_000).events) == (5, 500, 50, 0)
    observation = bridge.observe(page_of(after_restart), 3_000)
    assert totals(observation.events) == (1, 12, 3, 0)
    assert len(observation.resets) == 3 and not observation.restarted
    assert any("vllm:prompt_tokens" in reset for reset in observation.resets)


def test_a_new_process_start_time_resets_even_counters_that_grew() -> None:
    restarted = vllm_page(prompt=900, generation=90, success=3, hits=0, cached=0,
                          start=FIXTURE_VALUES["start"] + 3600)
    bridge = CounterBridge(TEMPLATE)
    bridge.observe(page_of(VLLM_TEXT), 1_000)
    observation = bridge.observe(page_of(restarted), 2_000)
    assert observation.restarted
    assert totals(observation.events) == (3, 900, 90, 0)


def test_a_reset_keeps_the_tokens_carried_from_before_it() -> None:
    bridge = CounterBridge(TEMPLATE)
    restarted = vllm_page(prompt=10, generation=2, success=1, hits=0, cached=0,
                          start=FIXTURE_VALUES["start"] + 60)
    pages = [VLLM_TEXT, grown(prompt=40, generation=8), restarted]
    events = [bridge.observe(page_of(text), 1_000 * i).events for i, text in enumerate(pages)]
    assert totals(events[2]) == (1, 50, 10, 0)


def test_a_series_missing_from_a_page_keeps_its_last_value() -> None:
    without_generation = "\n".join(line for line in grown(prompt=10, success=1).splitlines()
                                   if not line.startswith("vllm:generation_tokens_total"))
    pages = [VLLM_TEXT, without_generation, grown(prompt=30, generation=6, success=2)]
    events = observe_all(pages)
    assert totals(events[1]) == (1, 10, 0, 0)
    assert totals(events[2]) == (1, 20, 6, 0)  # 6 generated since the baseline, not 13


def test_aborted_requests_are_error_events_with_their_share() -> None:
    grown_with_abort = vllm_page(abort=1, prompt=FIXTURE_VALUES["prompt"] + 9,
                                 generation=FIXTURE_VALUES["generation"] + 3,
                                 success=FIXTURE_VALUES["success"] + 2)
    _, events = observe_all([vllm_page(abort=0), grown_with_abort])
    assert [e["status"] for e in events] == ["ok", "ok", "error"]
    assert totals(events)[:3] == (3, 9, 3)


def test_model_flag_overrides_the_model_name_label() -> None:
    _, events = observe_all([VLLM_TEXT, grown(prompt=4, success=1)], model="llama-2-7b")
    assert [e["model"] for e in events] == ["llama-2-7b"]


def test_each_model_of_a_server_gets_its_own_events() -> None:
    def two_models(first: int, second: int, requests: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="vllm:prompt_tokens_total",
                                labels={"model_name": name}, value=float(value))
                for name, value in (("a", first), ("b", second))] + [
            SimpleNamespace(name="vllm:request_success_total",
                            labels={"model_name": name, "finished_reason": "stop"},
                            value=float(requests)) for name in ("a", "b")]

    bridge = CounterBridge(TEMPLATE)
    bridge.observe(read_counters(two_models(0, 0, 0)), 1_000)
    events = bridge.observe(read_counters(two_models(10, 20, 1)), 2_000).events
    assert [(e["model"], e["input_tokens"]) for e in events] == [("a", 10), ("b", 20)]


TGI_PAGE = """\
# HELP tgi_request_count Total requests
# TYPE tgi_request_count counter
tgi_request_count {count}
# TYPE tgi_request_failure counter
tgi_request_failure{{err="validation"}} {failed}
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{{le="512"}} {inputs_count}
tgi_request_input_length_bucket{{le="+Inf"}} {inputs_count}
tgi_request_input_length_sum {inputs}
tgi_request_input_length_count {inputs_count}
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{{le="64"}} {ok}
tgi_request_generated_tokens_bucket{{le="+Inf"}} {ok}
tgi_request_generated_tokens_sum {outputs}
tgi_request_generated_tokens_count {ok}
# TYPE tgi_queue_size gauge
tgi_queue_size {queued}
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size {batch}
"""


def tgi_page(ok: int, failed: int, inputs: int, outputs: int, queued: int = 0,
             batch: int = 0) -> str:
    return TGI_PAGE.format(count=ok + failed, failed=failed, inputs=inputs,
                           inputs_count=ok + failed, ok=ok, outputs=outputs, queued=queued,
                           batch=batch)


def test_tgi_histogram_sums_and_counts_are_the_tokens_and_requests() -> None:
    page = page_of(tgi_page(ok=4, failed=1, inputs=700, outputs=90), model="mistral-7b")
    assert page.kind == "tgi"
    _, events = observe_all([tgi_page(4, 1, 700, 90), tgi_page(7, 2, 1200, 150)],
                            model="mistral-7b")
    assert totals(events) == (4, 500, 60, 0)
    assert [e["status"] for e in events] == ["ok", "ok", "ok", "error"]
    assert {e["model"] for e in events} == {"mistral-7b"}


def test_tgi_needs_a_model_flag() -> None:
    with pytest.raises(FlagRequired, match="--model"):
        page_of(tgi_page(1, 0, 10, 2))


def test_a_page_without_inference_counters_is_an_error() -> None:
    with pytest.raises(NoInferenceMetrics, match="/metrics"):
        page_of("# TYPE up gauge\nup 1\n")


def test_a_page_with_both_kinds_needs_the_kind_flag() -> None:
    both = VLLM_TEXT + "\n" + tgi_page(1, 0, 10, 2)
    with pytest.raises(FlagRequired, match="--kind"):
        page_of(both)
    assert page_of(both, kind="vllm").kind == "vllm"


def test_a_long_source_and_model_still_give_an_id_within_the_limit() -> None:
    events, _, _ = usage_events("m" * 200, Tally(1, 1, 0, 1), 1_700_000_000_000,
                                EventTemplate("s" * 200))
    assert len(events[0]["event_id"]) <= MAX_ID_LENGTH
    UsageEvent.model_validate(events[0])


def test_increase_is_per_series_so_one_engine_restart_is_seen() -> None:
    # vLLM data-parallel engines are separate series of one model: one restarting while the
    # other grows must not hide the reset inside their sum.
    def page(first: int, second: int) -> CounterPage:
        return CounterPage("vllm", {("m", "vllm:prompt_tokens", (("engine", "0"),)): first,
                                    ("m", "vllm:prompt_tokens", (("engine", "1"),)): second})

    interval = page_increase(page(100, 100), page(5, 300))
    assert interval.growth["m"].input_tokens == 5 + 200
    assert len(interval.resets) == 1


steps = st.lists(
    st.tuples(st.integers(0, 5_000), st.integers(0, 2_000), st.integers(0, 5_000),
              st.integers(0, 7), st.booleans()),
    min_size=1, max_size=12,
)


@given(steps)
def test_every_token_is_emitted_or_carried_and_none_invented(
    increments: list[tuple[int, int, int, int, bool]],
) -> None:
    bridge = CounterBridge(TEMPLATE)
    values = {name: int(FIXTURE_VALUES[name]) for name in ("prompt", "generation", "success",
                                                           "cached")}
    start = FIXTURE_VALUES["start"]
    bridge.observe(page_of(VLLM_TEXT), 0)
    grew = Tally()
    events: list[dict[str, Any]] = []
    for i, (prompt, generation, cached, requests, restart) in enumerate(increments, start=1):
        cached = min(cached, prompt)  # vLLM counts cached prompt tokens within the prompt
        if restart:  # a new process: counters from zero, a new start time from now on
            values = dict.fromkeys(values, 0)
            start += 1
        values = {"prompt": values["prompt"] + prompt,
                  "generation": values["generation"] + generation,
                  "cached": values["cached"] + cached, "success": values["success"] + requests}
        grew += Tally(prompt, generation, cached, requests)
        observation = bridge.observe(page_of(vllm_page(**values, start=start)), i * 15_000)
        events += observation.events
    carried = bridge.carried.get(MODEL, Tally())
    assert len(events) == grew.requests
    assert sum(e["input_tokens"] for e in events) + carried.input_tokens == grew.input_tokens
    assert sum(e["output_tokens"] for e in events) + carried.output_tokens == grew.output_tokens
    assert sum(e["cached_input_tokens"] for e in events) + carried.cached_input_tokens == (
        grew.cached_input_tokens)
    assert len({e["event_id"] for e in events}) == len(events)
    for event in events:
        UsageEvent.model_validate(event)


# --- the request queue (gauges, read as they stand) ----------------------------------------------


def queues_of(text: str, **options: Any) -> dict[str, RequestQueue]:
    samples = parse_metrics_page(text)
    kind = read_counters(samples, **options).kind
    return read_request_queues(samples, kind=kind, model=options.get("model"))


def test_the_real_vllm_page_gives_its_request_queue() -> None:
    assert queues_of(VLLM_TEXT) == {MODEL: RequestQueue(waiting=0, running=0)}
    assert queues_of(vllm_page(waiting=7, running=3)) == {MODEL: RequestQueue(7, 3)}


def test_queue_gauges_are_values_not_increases() -> None:
    pages = [vllm_page(waiting=9, running=4), vllm_page(waiting=2, running=4),
             vllm_page(waiting=0, running=1)]
    assert [queues_of(page)[MODEL] for page in pages] == [
        RequestQueue(9, 4), RequestQueue(2, 4), RequestQueue(0, 1)]


def test_engines_of_one_model_are_summed() -> None:
    # vLLM's v1 engine labels every series with its engine under data parallelism.
    text = re.sub(r'^(vllm:num_requests_(waiting|running))\{model_name="([^"]+)"\} \S+$',
                  r'\1{engine="0",model_name="\3"} 4.0\n\1{engine="1",model_name="\3"} 2.0',
                  VLLM_TEXT, flags=re.MULTILINE)
    assert text.count('engine="1"') == 2
    assert queues_of(text) == {MODEL: RequestQueue(waiting=6, running=6)}


def test_the_model_flag_names_the_queue_too() -> None:
    assert queues_of(vllm_page(waiting=5), model="opt-125m") == {
        "opt-125m": RequestQueue(waiting=5, running=0)}


def test_a_missing_or_unreadable_gauge_is_left_out_not_zero() -> None:
    no_running = re.sub(r"^vllm:num_requests_running\{.*$\n?", "", VLLM_TEXT, flags=re.M)
    assert queues_of(no_running) == {MODEL: RequestQueue(waiting=0, running=None)}
    assert queues_of(vllm_page(waiting=math.nan, running=-1.0)) == {}
    no_gauges = re.sub(r"^vllm:num_requests_(running|waiting)\{.*$\n?", "", VLLM_TEXT,
                       flags=re.M)
    assert queues_of(no_gauges) == {}


def test_a_queue_gauge_without_a_model_needs_the_model_flag() -> None:
    sample = SimpleNamespace(name="vllm:num_requests_waiting", labels={}, value=1.0)
    with pytest.raises(FlagRequired, match="--model"):
        read_request_queues([sample], kind="vllm")
    assert read_request_queues([sample], kind="vllm", model="m") == {
        "m": RequestQueue(waiting=1)}


def test_tgi_queue_and_batch_are_its_waiting_and_running_requests() -> None:
    page = tgi_page(4, 1, 700, 90, queued=12, batch=32)
    assert queues_of(page, model="mistral-7b") == {"mistral-7b": RequestQueue(12, 32)}
