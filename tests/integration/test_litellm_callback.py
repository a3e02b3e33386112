"""CostfluxCallback inside real LiteLLM calls (``mock_response``: no network) on the embedded
broker: every call, sync or async, streamed or not, failed or not, is one valid event."""

from __future__ import annotations

import os

# LiteLLM fetches its price map from GitHub when imported unless told to use its bundled copy.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncio  # noqa: E402
import hashlib  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import litellm  # noqa: E402
import orjson  # noqa: E402
import pytest  # noqa: E402
from litellm.proxy.types_utils.utils import get_instance_fn  # noqa: E402

import costflux.integrations.litellm as costflux_litellm  # noqa: E402
from costflux.embedded import free_port  # noqa: E402
from costflux.integrations.litellm import CostfluxCallback  # noqa: E402
from costflux.schemas.usage import UsageEvent  # noqa: E402
from costflux.settings import ConfigError  # noqa: E402
from tests.background import run_async
from tests.integration.test_producer import Received, create_topic, read_all  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    # LiteLLM 1.110 lazily imports its GitHub Copilot provider during a first completion, and
    # that module builds a pydantic TypeAdapter over a ReadOnly TypedDict: pydantic warns, and
    # with warnings as errors the completion itself would fail.
    pytest.mark.filterwarnings("ignore:Item.* using the `ReadOnly` qualifier:UserWarning"),
]

PARTITIONS = 3
MESSAGES = [{"role": "user", "content": "What does a token cost?"}]
#: Passed as every call's api_key, and planted as a key alias: it must reach no message.
RAW_KEY = "sk-costflux-integration-raw-key-5f2b9c7d"


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


async def wait_until_async(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    """As wait_until, letting this loop run the logging tasks LiteLLM queued on it."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
def topic(kafka_bootstrap: str, unique: Callable[[str], str]) -> str:
    name = unique("litellm-usage")
    create_topic(kafka_bootstrap, name, PARTITIONS)
    return name


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[CostfluxCallback], None]]:
    """Register callbacks as an SDK user does; each is closed (and so unregistered) after."""
    callbacks: list[CostfluxCallback] = []
    monkeypatch.setattr(litellm, "callbacks", [])

    def register(callback: CostfluxCallback) -> None:
        callbacks.append(callback)
        litellm.callbacks.append(callback)

    yield register
    for callback in callbacks:
        callback.close(timeout=10)


def events_of(received: list[Received]) -> dict[str, dict[str, Any]]:
    """Each message's event, by its labels' end_user (every call below names its own)."""
    events: dict[str, dict[str, Any]] = {}
    for message in received:
        event = orjson.loads(message.value)
        UsageEvent.model_validate(event)
        assert message.key == event["event_id"].encode()
        events[event["labels"]["end_user"]] = event
    return events


def call_metadata(case: str, **extra: Any) -> dict[str, Any]:
    return {"user_api_key_team_alias": "search", "user_api_key_alias": "search-prod",
            "user_api_key_end_user_id": case, **extra}


def test_every_call_is_exactly_one_valid_event_and_no_key_leaks(
    kafka_bootstrap: str, topic: str, registered: Callable[[CostfluxCallback], None],
) -> None:
    callback = CostfluxCallback(kafka_bootstrap, topic=topic)
    registered(callback)
    started_ms = int(time.time() * 1000)
    usage: dict[str, Any] = {}

    usage["sync"] = litellm.completion(
        model="gpt-4o", messages=MESSAGES, mock_response="About a millionth of a dollar.",
        api_key=RAW_KEY,
        metadata=call_metadata("sync", tags=["project:assistant", "app:web", "nightly"],
                               spend_logs_metadata={"namespace": "ml-prod"}),
    ).usage
    usage["cached"] = litellm.completion(
        model="gpt-4o", messages=MESSAGES, api_key=RAW_KEY, metadata=call_metadata("cached"),
        mock_response={
            "id": "chatcmpl-cached", "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "Cheaper."}}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 80, "total_tokens": 1280,
                      "prompt_tokens_details": {"cached_tokens": 1024}},
        },
    ).usage
    for _chunk in litellm.completion(
        model="gpt-4o", messages=MESSAGES, mock_response="Streamed, token by token.",
        stream=True, api_key=RAW_KEY, metadata=call_metadata("sync-stream"),
    ):
        pass
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(model="gpt-4o", messages=MESSAGES, api_key=RAW_KEY,
                           mock_response="litellm.RateLimitError",
                           metadata=call_metadata("sync-failure"))
    # What LiteLLM's proxy puts in the metadata for a virtual key: its sha256, a team id.
    # The raw key planted as the key alias must be skipped for the hash.
    usage["proxy-style"] = litellm.completion(
        model="gpt-4o", messages=MESSAGES, mock_response="Hashed.", api_key=RAW_KEY,
        user="proxy-style",
        metadata={"user_api_key": hashlib.sha256(RAW_KEY.encode()).hexdigest(),
                  "user_api_key_alias": RAW_KEY, "user_api_key_team_id": "team-7f3a"},
    ).usage
    wait_until(lambda: callback.stats().queued == 5, "the sync calls' events")

    async def async_calls() -> None:
        response = await litellm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response="Async.", api_key=RAW_KEY,
            metadata=call_metadata("async"))
        usage["async"] = response.usage
        stream = await litellm.acompletion(
            model="gpt-4o", messages=MESSAGES, mock_response="Async, streamed.", stream=True,
            api_key=RAW_KEY, metadata=call_metadata("async-stream"))
        async for _chunk in stream:
            pass
        with pytest.raises(litellm.RateLimitError):
            await litellm.acompletion(model="gpt-4o", messages=MESSAGES, api_key=RAW_KEY,
                                      mock_response="litellm.RateLimitError",
                                      metadata=call_metadata("async-failure"))
        await wait_until_async(lambda: callback.stats().queued == 8, "the async calls' events")

    run_async(async_calls())
    assert callback.flush(timeout=30)
    finished_ms = int(time.time() * 1000)
    assert callback.stats().failures == {}

    received = read_all(kafka_bootstrap, topic, PARTITIONS, 8)
    assert len(received) == 8  # and no more arrived in read_all's quiet second
    for message in received:
        assert RAW_KEY.encode() not in message.value + (message.key or b"")
    events = events_of(received)
    assert sorted(events) == sorted(["sync", "cached", "sync-stream", "sync-failure",
                                     "proxy-style", "async", "async-stream", "async-failure"])
    assert len({event["event_id"] for event in events.values()}) == 8
    for case, event in events.items():
        assert event["model"] == "gpt-4o"
        assert event["event_id"].startswith("litellm:")
        assert started_ms <= UsageEvent.model_validate(event).ts_ms <= finished_ms
        assert event["status"] == ("error" if case.endswith("failure") else "ok")
        if case in usage:  # LiteLLM's own answer says what it counted
            assert (event["input_tokens"], event["output_tokens"]) == (
                usage[case].prompt_tokens, usage[case].completion_tokens)
        if case.endswith("failure"):
            assert (event["input_tokens"], event["output_tokens"]) == (0, 0)
        if case.endswith("stream"):
            assert event["input_tokens"] > 0 and event["output_tokens"] > 0
        if case != "proxy-style":
            labels = event["labels"]
            assert (labels["team"], labels["api_key"]) == ("search", "search-prod")
    assert events["cached"]["cached_input_tokens"] == 1024
    assert events["sync"]["labels"] == {
        "team": "search", "api_key": "search-prod", "end_user": "sync",
        "project": "assistant", "app": "web", "namespace": "ml-prod",
    }
    assert events["proxy-style"]["labels"] == {
        "team": "team-7f3a",
        "api_key": hashlib.sha256(RAW_KEY.encode()).hexdigest()[:12],
        "end_user": "proxy-style",  # the OpenAI user parameter
    }


def test_two_destinations_are_two_callbacks(
    kafka_bootstrap: str, unique: Callable[[str], str],
    registered: Callable[[CostfluxCallback], None],
) -> None:
    # LiteLLM keeps one logger per class and public attributes: topic and bootstrap are.
    topics = [unique("litellm-a"), unique("litellm-b")]
    callbacks = []
    for name in topics:
        create_topic(kafka_bootstrap, name, 1)
        callbacks.append(CostfluxCallback(kafka_bootstrap, topic=name))
        registered(callbacks[-1])
    litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="Twice.",
                       metadata=call_metadata("both"))
    for callback, name in zip(callbacks, topics, strict=True):
        wait_until(lambda c=callback: c.stats().queued == 1, f"the event for {name}")
        assert callback.flush(timeout=30)
        assert len(read_all(kafka_bootstrap, name, 1, 1)) == 1


def test_the_proxy_config_name_is_a_callback_made_from_the_environment(
    kafka_bootstrap: str, topic: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    registered: Callable[[CostfluxCallback], None],
) -> None:
    monkeypatch.setenv("COSTFLUX_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("COSTFLUX_TOPIC_USAGE", topic)
    assert "costflux_callback" not in vars(costflux_litellm)  # importing made nothing
    try:
        # How the proxy resolves `litellm_settings: callbacks: [...]` from config.yaml.
        loaded = get_instance_fn("costflux.integrations.litellm.costflux_callback",
                                 config_file_path=str(tmp_path / "config.yaml"))
        assert isinstance(loaded, CostfluxCallback)
        assert (loaded.bootstrap, loaded.topic) == (kafka_bootstrap, topic)
        assert costflux_litellm.costflux_callback is loaded
        registered(loaded)
        litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="Proxy.",
                           metadata=call_metadata("proxy"))
        wait_until(lambda: loaded.stats().queued == 1, "the event")
        assert loaded.flush(timeout=30)
        [message] = read_all(kafka_bootstrap, topic, PARTITIONS, 1)
        assert orjson.loads(message.value)["labels"]["end_user"] == "proxy"
    finally:
        vars(costflux_litellm).pop("costflux_callback", None)


def test_without_a_bootstrap_it_says_what_to_set() -> None:
    with pytest.raises(ConfigError, match="COSTFLUX_KAFKA_BOOTSTRAP"):
        CostfluxCallback()


def test_an_unreachable_broker_never_fails_a_litellm_call(
    registered: Callable[[CostfluxCallback], None],
) -> None:
    callback = CostfluxCallback(f"127.0.0.1:{free_port()}", topic="llm.usage.v1",
                                delivery_check_s=0.1, delivery_timeout_s=0.2)
    registered(callback)
    response = litellm.completion(model="gpt-4o", messages=MESSAGES, mock_response="Still here.",
                                  metadata=call_metadata("unreachable"))
    assert response.choices[0].message.content == "Still here."
    wait_until(lambda: callback.stats().failures.get("delivery", 0) >= 1,
               "the delivery check to notice")
    # A call LiteLLM could not describe is counted, not raised.
    callback.log_success_event({}, None, None, None)
    assert callback.stats().failures["no_payload"] == 1
    assert not callback.flush(timeout=0.5)
    assert not callback.close(timeout=0.5)
    callback.log_success_event({}, None, None, None)  # after close: counted, not raised
    assert callback not in litellm.logging_callback_manager.get_all_callbacks()
