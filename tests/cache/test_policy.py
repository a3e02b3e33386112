"""The cache's pure rules: partitions, bypasses, the hit decision, usage, labels, events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from costflux.cache.policy import (
    Bypass,
    CachePolicy,
    Candidate,
    Lookup,
    best_hit,
    classify,
    evictions_needed,
    labels_from_headers,
)
from costflux.cache.usage import usage_event

POLICY = CachePolicy(threshold=0.95, max_temperature=1.0, tenant_label="team")
TEAM = {"team": "search"}


def chat(content: Any = "Hi there", **params: Any) -> dict[str, Any]:
    return {"model": "gpt-4", "messages": [{"role": "system", "content": "Be terse."},
                                           {"role": "user", "content": content}], **params}


def lookup(body: dict[str, Any], labels: dict[str, str] = TEAM,
           policy: CachePolicy = POLICY) -> Lookup:
    decision = classify("chat", body, labels, policy)
    assert isinstance(decision, Lookup), decision
    return decision


def test_the_semantic_text_is_the_last_user_turn_and_the_rest_is_exact() -> None:
    base = lookup(chat(temperature=0))
    assert base.text == "Hi there"
    assert lookup(chat("Hello", temperature=0)).partition == base.partition
    assert lookup(chat(temperature=0, user="u1", stream=False)).partition == base.partition
    changed = [
        chat(temperature=0.2), chat(temperature=0, top_p=0.5), chat(temperature=0, seed=1),
        chat(temperature=0, max_tokens=10), {**chat(temperature=0), "model": "gpt-4o"},
        {**chat(temperature=0), "messages": [{"role": "system", "content": "Be verbose."},
                                             {"role": "user", "content": "Hi there"}]},
    ]
    partitions = {lookup(body).partition for body in changed}
    assert base.partition not in partitions and len(partitions) == len(changed)
    assert lookup(chat(temperature=0), {"team": "ads"}).partition != base.partition
    shared = CachePolicy(tenant_label=None)
    assert (lookup(chat(temperature=0), {"team": "ads"}, shared).partition
            == lookup(chat(temperature=0), TEAM, shared).partition)


@pytest.mark.parametrize(("body", "reason"), [
    (chat(temperature=1.5), "temperature"),
    (chat(temperature=0, cache=False), "cache_false"),
    (chat(temperature=0, stream=True), "stream"),
    (chat([{"type": "image_url", "image_url": {"url": "x"}}]), "content_not_text"),
    ({"model": "gpt-4", "messages": [{"role": "assistant", "content": "x"}]},
     "last_message_not_user"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no_model"),
    (chat(temperature="hot"), "bad_temperature"),
])
def test_requests_that_must_not_use_the_cache_bypass_it(body: dict[str, Any],
                                                        reason: str) -> None:
    assert classify("chat", body, TEAM, POLICY) == Bypass(reason)


def test_no_temperature_means_the_api_default_and_the_bound_is_inclusive() -> None:
    assert isinstance(classify("chat", chat(), TEAM, POLICY), Lookup)
    assert classify("chat", chat(), TEAM, CachePolicy(max_temperature=0.5)) == Bypass(
        "temperature")
    assert isinstance(classify("chat", chat(temperature=1.0), TEAM, POLICY), Lookup)


def test_completion_prompts_are_text_or_bypass() -> None:
    body = {"model": "davinci-002", "prompt": ["Once upon a time"], "temperature": 0}
    decision = classify("completions", body, TEAM, POLICY)
    assert isinstance(decision, Lookup) and decision.text == "Once upon a time"
    assert classify("completions", {**body, "prompt": [1, 2, 3]}, TEAM, POLICY) == Bypass(
        "prompt_not_text")


def test_a_hit_needs_the_partition_the_threshold_and_for_long_prompts_the_same_text() -> None:
    near = Candidate(1, "p", 0.97, None)
    nearer = Candidate(2, "p", 0.99, None)
    other = Candidate(3, "q", 1.0, None)
    far = Candidate(4, "p", 0.9499, None)
    assert best_hit([near, other, nearer, far], "p", 0.95, None) == nearer
    assert best_hit([other, far], "p", 0.95, None) is None
    assert best_hit([Candidate(5, "p", 0.95, None)], "p", 0.95, None) is not None
    long_entry = Candidate(6, "p", 1.0, "abc")
    assert best_hit([long_entry], "p", 0.95, "abc") == long_entry
    assert best_hit([long_entry], "p", 0.95, "abd") is None
    assert best_hit([long_entry], "p", 0.95, None) is None
    assert best_hit([near], "p", 0.95, "abc") is None


def test_eviction_count_and_policy_validation() -> None:
    assert [evictions_needed(n, 3) for n in (0, 3, 4, 10)] == [0, 0, 1, 7]
    with pytest.raises(ValueError, match="threshold"):
        CachePolicy(threshold=0)
    with pytest.raises(ValueError, match="temperature"):
        CachePolicy(max_temperature=-1)


def test_labels_and_the_event() -> None:
    labels = labels_from_headers({"X-Costflux-Team": "search", "X-Costflux-Cost-Center": "42",
                                  "Authorization": "Bearer x"}, {"namespace": "ml", "team": "d"})
    assert labels == {"namespace": "ml", "team": "search", "cost_center": "42"}
    event = usage_event(event_id="cache:1", ts=datetime(2024, 5, 1, 12, tzinfo=UTC),
                        model="gpt-4", usage=None, labels=labels, latency_ms=-1, ok=False,
                        cache_hit=False)
    assert event == {"event_id": "cache:1", "ts": "2024-05-01T12:00:00Z", "model": "gpt-4",
                     "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0,
                     "latency_ms": 0.0, "status": "error", "labels": labels,
                     "cache_hit": False}
