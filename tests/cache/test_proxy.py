"""The caching proxy as a real process between a client and a local upstream that counts
calls, with the embedded broker and Redis: hits, misses, safety rules, eviction, restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import requests

from costflux.cache.embedder import Embedder
from costflux.core.events import Rejected, decode_usage_message
from costflux.embedded import EmbeddedRedis, free_port
from costflux.settings import Settings
from tests.background import in_background
from tests.cache.upstream import FAIL_MARKER, REDIRECT_MARKER, Upstream, usage_for
from tests.integration.test_producer import read_all
from tests.paths import REPO

pytestmark = pytest.mark.integration

API_KEY = "sk-test-0123456789abcdef-secret"
THRESHOLD = 0.95
QUESTION = "How do I reverse a list in Python?"
PARAPHRASE = "How can I reverse a list in Python?"
UNRELATED = "How do I sort a list in Python?"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


def similarity(embedder: Embedder, a: str, b: str) -> float:
    x, y = embedder.embed([a, b])
    return float(x.vector @ y.vector)


class Proxy:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def chat(self, content: str, *, team: str = "search", **params: Any) -> requests.Response:
        body = {"model": "gpt-4", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": content}], **params}
        return requests.post(f"{self.url}/v1/chat/completions", json=body, timeout=30,
                             headers={"Authorization": f"Bearer {API_KEY}",
                                      "X-Costflux-Team": team, "X-Costflux-App": "docs-bot"})


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., Proxy]]:
    running: list[subprocess.Popen[bytes]] = []

    @contextmanager
    def nothing() -> Iterator[None]:
        yield

    def start(settings: Settings, upstream: str, *args: str, command: str = "cache") -> Proxy:
        port = free_port()
        env = {**os.environ, "COSTFLUX_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
               "COSTFLUX_REDIS_URL": str(settings.redis_url),
               "COSTFLUX_TOPIC_USAGE": settings.topic_usage, "COSTFLUX_TOPIC_PARTITIONS": "1",
               "COSTFLUX_HTTP_HOST": "127.0.0.1", "COSTFLUX_HTTP_PORT": str(port),
               "COSTFLUX_LOG_LEVEL": "debug",
               "COSTFLUX_CACHE_NAMESPACE": settings.consumer_group}
        log = tmp_path / f"proxy-{len(running)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "costflux", command, "--upstream", upstream,
                 "--label", "namespace=ml-prod", *args],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        running.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    return Proxy(url, log)
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError(f"proxy did not start:\n{log.read_text()}")

    yield start
    for process in running:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=20)


def events(settings: Settings, count: int) -> list[dict[str, Any]]:
    """The proxy's events, each checked by the pipeline's own decoder (the contract)."""
    received = read_all(str(settings.kafka_bootstrap), settings.topic_usage, 1, count)
    for message in received:
        decoded, _ = decode_usage_message(message.value)
        assert not [d for d in decoded if isinstance(d, Rejected)], decoded
    return [orjson.loads(message.value) for message in received]


def test_identical_and_paraphrased_prompts_are_served_from_the_cache_unrelated_ones_are_not(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
    embedder: Embedder,
) -> None:
    # The premise, recomputed with the embedding itself rather than assumed.
    assert similarity(embedder, QUESTION, PARAPHRASE) >= THRESHOLD
    assert similarity(embedder, QUESTION, UNRELATED) < THRESHOLD
    settings = settings_for()
    with Upstream() as upstream:
        proxy = start_proxy(settings, upstream.url)
        first = proxy.chat(QUESTION, temperature=0)
        assert first.status_code == 200 and first.headers["X-Costflux-Cache"] == "miss"
        assert upstream.calls == 1
        again = proxy.chat(QUESTION, temperature=0)
        paraphrased = proxy.chat(PARAPHRASE, temperature=0)
        assert upstream.calls == 1  # both answered by the proxy
        for response in (again, paraphrased):
            assert response.headers["X-Costflux-Cache"] == "hit"
            assert response.json() == first.json()
        unrelated = proxy.chat(UNRELATED, temperature=0)
        assert unrelated.headers["X-Costflux-Cache"] == "miss"
        assert upstream.calls == 2
        assert unrelated.json()["choices"] != first.json()["choices"]

    published = events(settings, 4)
    assert [e["cache_hit"] for e in published] == [False, True, True, False]
    assert len({e["event_id"] for e in published}) == 4
    original = usage_for(QUESTION)
    for event in published[:3]:  # the hits carry the original answer's tokens: not sent
        assert (event["input_tokens"], event["output_tokens"], event["cached_input_tokens"]) == (
            original["prompt_tokens"], original["completion_tokens"], 3)
        assert event["model"] == "gpt-4" and event["status"] == "ok"
    assert published[3]["input_tokens"] == usage_for(UNRELATED)["prompt_tokens"]
    assert all(e["labels"] == {"team": "search", "app": "docs-bot", "namespace": "ml-prod"}
               for e in published)


def test_the_gateway_answers_from_the_same_cache_with_semantic_cache_on(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    settings = settings_for()
    with Upstream() as upstream:
        gateway = start_proxy(settings, upstream.url, "--semantic-cache", command="gateway")
        first = gateway.chat(QUESTION, temperature=0)
        assert first.status_code == 200 and first.headers["X-Costflux-Cache"] == "miss"
        again = gateway.chat(PARAPHRASE, temperature=0)
        assert again.headers["X-Costflux-Cache"] == "hit" and again.json() == first.json()
        assert upstream.calls == 1
    published = events(settings, 2)
    assert [e["cache_hit"] for e in published] == [False, True]
    original = usage_for(QUESTION)
    assert all((e["input_tokens"], e["output_tokens"]) == (
        original["prompt_tokens"], original["completion_tokens"]) for e in published)


def test_sampling_parameters_temperature_bound_opt_out_and_tenants_are_kept_apart(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
    redis_url: str,
) -> None:
    settings = settings_for()
    with Upstream() as upstream:
        proxy = start_proxy(settings, upstream.url, "--max-temperature", "0.7")
        assert proxy.chat(QUESTION, temperature=0).headers["X-Costflux-Cache"] == "miss"
        # Another temperature, another max_tokens, another tenant: never the stored answer.
        assert proxy.chat(QUESTION, temperature=0.5).headers["X-Costflux-Cache"] == "miss"
        assert proxy.chat(QUESTION, temperature=0, max_tokens=5).headers[
            "X-Costflux-Cache"] == "miss"
        assert proxy.chat(QUESTION, temperature=0, team="ads").headers[
            "X-Costflux-Cache"] == "miss"
        assert upstream.calls == 4
        # Hotter than the bound, or marked cache: false: upstream every time, nothing stored.
        for _ in range(2):
            hot = proxy.chat(QUESTION, temperature=0.9)
            assert hot.headers["X-Costflux-Cache"] == "bypass:temperature"
            opted_out = proxy.chat(QUESTION, temperature=0, cache=False)
            assert opted_out.headers["X-Costflux-Cache"] == "bypass:cache_false"
        assert upstream.calls == 8
        assert all("cache" not in body for _, _, body in upstream.requests)  # ours, stripped
        assert proxy.chat(QUESTION, temperature=0, team="ads").headers[
            "X-Costflux-Cache"] == "hit"
        # A key in the query string (Azure's api-key=) reaches the upstream, not the log.
        keyed = requests.post(f"{proxy.url}/v1/chat/completions?api-key={API_KEY}",
                              json={"model": "gpt-4", "temperature": 0, "messages": [
                                  {"role": "user", "content": QUESTION}]},
                              headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        assert keyed.headers["X-Costflux-Cache"] == "miss"  # another context and tenant
        assert upstream.requests[-1][0].endswith(f"api-key={API_KEY}")

        # The API key went upstream with every call, and nowhere else.
        assert all(headers.get("Authorization") == f"Bearer {API_KEY}"
                   for _, headers, _ in upstream.requests)
    client = redis.Redis.from_url(redis_url)
    try:
        keys = client.keys(f"{settings.consumer_group}:*")
        assert keys
        for key in keys:
            dumped = client.dump(key)
            assert dumped is not None and API_KEY.encode() not in dumped
    finally:
        client.close()
    published = events(settings, 10)
    assert API_KEY not in orjson.dumps(published).decode()
    assert [e["cache_hit"] for e in published].count(True) == 1
    assert API_KEY not in proxy.log.read_text()


def test_upstream_errors_are_returned_unchanged_and_not_cached(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    settings = settings_for()
    with Upstream() as upstream:
        proxy = start_proxy(settings, upstream.url)
        for _ in range(2):
            failed = proxy.chat(f"{FAIL_MARKER} now", temperature=0)
            assert failed.status_code == 500
            assert failed.json() == {"error": {"message": "upstream broke", "type": "x"}}
        assert upstream.calls == 2
    published = events(settings, 2)
    assert [e["status"] for e in published] == ["error", "error"]
    assert not any(e["cache_hit"] for e in published)


def test_an_upstream_redirect_is_returned_to_the_client_not_followed_with_its_key(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    """Following it would send the client's credentials to wherever the upstream points."""
    settings = settings_for()
    with Upstream() as upstream, Upstream() as elsewhere:
        upstream.redirect_to = elsewhere.url
        proxy = start_proxy(settings, upstream.url)
        answer = requests.post(
            f"{proxy.url}/v1/chat/completions", timeout=30, allow_redirects=False,
            json={"model": "gpt-4", "messages": [
                {"role": "user", "content": f"{REDIRECT_MARKER} now"}], "temperature": 0},
            headers={"Authorization": f"Bearer {API_KEY}", "X-Costflux-Team": "search"})
        assert answer.status_code == 307
        assert answer.headers["Location"] == f"{elsewhere.url}/v1/chat/completions"
        assert upstream.calls == 1
        assert elsewhere.calls == 0


def test_streams_pass_through_uncached_with_their_reported_usage(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    settings = settings_for()
    with Upstream() as upstream:
        proxy = start_proxy(settings, upstream.url)
        bodies = []
        for _ in range(2):
            streamed = proxy.chat(QUESTION, temperature=0, stream=True,
                                  stream_options={"include_usage": True})
            assert streamed.status_code == 200
            bodies.append(streamed.content)
        assert upstream.calls == 2
        assert bodies[0].endswith(b"data: [DONE]\n\n") and b'"usage"' in bodies[0]
    published = events(settings, 2)
    assert [e["input_tokens"] for e in published] == [usage_for(QUESTION)["prompt_tokens"]] * 2
    assert not any(e["cache_hit"] for e in published)


def test_least_recently_used_entries_go_at_the_maximum_and_a_restart_rebuilds_the_index(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    settings = settings_for()
    first, second, third = ("What is the capital of France?", "Explain how photosynthesis works.",
                            "Summarize the plot of Hamlet.")
    with Upstream() as upstream:
        proxy = start_proxy(settings, upstream.url, "--max-entries", "2")
        proxy.chat(first, temperature=0)
        proxy.chat(second, temperature=0)
        assert proxy.chat(first, temperature=0).headers["X-Costflux-Cache"] == "hit"
        proxy.chat(third, temperature=0)  # evicts `second`, the least recently used
        assert upstream.calls == 3
        assert proxy.chat(second, temperature=0).headers["X-Costflux-Cache"] == "miss"
        assert upstream.calls == 4  # and `second` now evicts `first`
        health = requests.get(f"{proxy.url}/healthz", timeout=5).json()
        assert health["evicted"] == 2 and health["indexed"] == 2

        restarted = start_proxy(settings, upstream.url, "--max-entries", "2")
        health = requests.get(f"{restarted.url}/healthz", timeout=5).json()
        assert health["indexed"] == 2  # rebuilt from Redis
        assert restarted.chat(third, temperature=0).headers["X-Costflux-Cache"] == "hit"
        assert restarted.chat(second, temperature=0).headers["X-Costflux-Cache"] == "hit"
        assert restarted.chat(first, temperature=0).headers["X-Costflux-Cache"] == "miss"
        assert upstream.calls == 5


def test_entries_expire_after_their_ttl(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    settings = settings_for()
    with Upstream() as upstream:
        proxy = start_proxy(settings, upstream.url, "--ttl", "1")
        assert proxy.chat(QUESTION, temperature=0).headers["X-Costflux-Cache"] == "miss"
        assert proxy.chat(QUESTION, temperature=0).headers["X-Costflux-Cache"] == "hit"
        time.sleep(2.5)
        assert proxy.chat(QUESTION, temperature=0).headers["X-Costflux-Cache"] == "miss"
        assert proxy.chat(PARAPHRASE, temperature=0).headers["X-Costflux-Cache"] == "hit"
        assert upstream.calls == 2


def test_replicas_share_entries_through_redis(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    settings = settings_for()
    with Upstream() as upstream:
        first, second = start_proxy(settings, upstream.url), start_proxy(settings, upstream.url)
        assert first.chat(QUESTION, temperature=0).headers["X-Costflux-Cache"] == "miss"
        # The same text: found at once through its digest in Redis.
        assert second.chat(QUESTION, temperature=0).headers["X-Costflux-Cache"] == "hit"
        # A paraphrase: once the second replica's index has synced the first one's entry.
        deadline = time.monotonic() + 20
        while requests.get(f"{second.url}/healthz", timeout=5).json()["indexed"] < 1:
            assert time.monotonic() < deadline, "the entry never reached the other replica"
            time.sleep(0.2)
        assert second.chat(PARAPHRASE, temperature=0).headers["X-Costflux-Cache"] == "hit"
        assert upstream.calls == 1


def test_without_its_redis_requests_are_answered_upstream_and_caching_resumes_after(
    settings_for: Callable[..., Settings], start_proxy: Callable[..., Proxy],
) -> None:
    """The cache is an optimisation: Redis refusing or hanging must not fail a request."""
    with EmbeddedRedis(durable=True) as own_redis, Upstream() as upstream:
        settings = settings_for(redis_url=own_redis.url)
        proxy = start_proxy(settings, upstream.url)

        def decisions(*prompts: str) -> list[str]:
            answers = [proxy.chat(prompt, temperature=0) for prompt in prompts]
            assert [a.status_code for a in answers] == [200] * len(prompts)
            return [a.headers["X-Costflux-Cache"] for a in answers]

        assert decisions(QUESTION, QUESTION) == ["miss", "hit"]
        client = redis.Redis.from_url(own_redis.url)
        try:  # hung: every command waits longer than the proxy's 1 s Redis timeout
            client.execute_command("CLIENT", "PAUSE", "3000", "ALL")
            started = time.monotonic()
            assert decisions(QUESTION) == ["bypass:cache_unavailable"]
            assert time.monotonic() - started < 2.5
        finally:
            client.close()
        time.sleep(3)
        down = in_background(lambda: own_redis.restart(down_s=3.0))
        time.sleep(1)  # refused
        assert decisions(QUESTION, UNRELATED) == ["bypass:cache_unavailable"] * 2
        down.join(30)
        assert decisions(QUESTION, UNRELATED, UNRELATED) == ["hit", "miss", "hit"]
        assert upstream.calls == 1 + 3 + 1
        health = requests.get(f"{proxy.url}/healthz", timeout=5).json()
        assert health["redis_errors"] == 3
    published = events(settings, 8)
    assert [e["cache_hit"] for e in published] == [False, True, False, False, False,
                                                   True, False, True]
    assert proxy.log.read_text().count("answered without the cache") == 3
