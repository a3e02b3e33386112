"""LiteLLM's StandardLoggingPayload -> usage event, on payloads captured from LiteLLM (no broker).

The payloads in tests/fixtures/litellm/ were logged by the real ``litellm`` package for
``mock_response`` calls (see its SOURCE.md); the expected events are written by hand from
that JSON, not computed by the code under test.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.core.litellm_usage import LitellmPayloadError, usage_event_from_litellm
from costflux.schemas._types import MAX_ID_LENGTH, MAX_LABEL_VALUE_LENGTH, MAX_TOKENS_PER_REQUEST
from costflux.schemas.usage import UsageEvent
from tests.paths import REPO

FIXTURE = REPO / "tests/fixtures/litellm/standard_logging_payloads.json"
#: The made-up key capture.py passed as ``api_key`` to every call.
RAW_KEY = "sk-costflux-fixture-raw-key-0123456789"


@pytest.fixture(scope="module")
def captured() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))["cases"]
    return cases


@pytest.fixture
def payloads(captured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A copy each test may change."""
    return copy.deepcopy(captured)


def event_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The mapped event, checked against the contract the pipeline enforces."""
    event = usage_event_from_litellm(payload)
    UsageEvent.model_validate(event)
    return event


def test_the_fixture_holds_no_raw_key() -> None:
    assert RAW_KEY not in FIXTURE.read_text(encoding="utf-8")


def test_a_success_with_key_team_and_request_metadata(payloads: dict[str, Any]) -> None:
    assert event_of(payloads["sdk_success_with_metadata"]) == {
        "event_id": "litellm:a3b3c43a-460d-4efa-92cf-24cbb2973a15:"
                    "chatcmpl-b4ce2208-bc4d-4783-90e4-659388366028",
        "ts": "2026-12-06T05:18:54.008Z",  # endTime 1796534334.008805
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 20,
        "cached_input_tokens": 0,
        "latency_ms": 161.989,  # endTime - startTime 1796534333.846816
        "status": "ok",
        "cache_hit": False,
        "labels": {
            "team": "search",  # the alias wins over user_api_key_team_id team-7f3a
            "api_key": "search-prod",
            "end_user": "alice@example.com",  # the payload's end_user, not user=customer-42
            "project": "assistant",  # tag project:assistant
            "app": "web",  # tag app:web; the plain tag batch-nightly is no label
            "namespace": "ml-prod",  # spend_logs_metadata
        },
    }


def test_openai_cached_tokens_are_part_of_the_input(payloads: dict[str, Any]) -> None:
    event = event_of(payloads["sdk_success_openai_cached_tokens"])
    assert (event["input_tokens"], event["output_tokens"], event["cached_input_tokens"]) == (
        1200, 80, 1024)
    # The model the call named, not the response's dated snapshot gpt-4o-2024-08-06.
    assert event["model"] == "gpt-4o"
    assert event["labels"] == {"team": "team-7f3a"}  # no alias: the team id


def test_anthropic_cache_reads_are_cached_tokens(payloads: dict[str, Any]) -> None:
    payload = payloads["sdk_success_anthropic_cache_read"]
    event = event_of(payload)
    assert event["model"] == "claude-3-5-sonnet-20240620"  # LiteLLM dropped "anthropic/"
    assert (event["input_tokens"], event["cached_input_tokens"]) == (2100, 2000)
    # Where LiteLLM did not copy the count into prompt_tokens_details, Anthropic's own field.
    del payload["metadata"]["usage_object"]["prompt_tokens_details"]
    del payload["response"]["usage"]["prompt_tokens_details"]
    assert event_of(payload)["cached_input_tokens"] == 2000


def test_cache_writes_reasoning_and_audio_are_their_own_kinds(
    payloads: dict[str, Any],
) -> None:
    payload = payloads["sdk_success_anthropic_cache_read"]  # 2,100 input, 2,000 cache reads
    usage = payload["metadata"]["usage_object"]
    usage["cache_creation_input_tokens"] = 90
    usage["cache_creation"] = {"ephemeral_5m_input_tokens": 30, "ephemeral_1h_input_tokens": 60}
    event = event_of(payload)
    assert (event["cache_write_input_tokens"], event["cache_write_1h_input_tokens"]) == (30, 60)
    usage["cache_creation_input_tokens"] = 500  # more than the input leaves: capped
    event = event_of(payload)
    assert event["cache_write_1h_input_tokens"] + event["cache_write_input_tokens"] == 100

    payload = payloads["sdk_success_openai_cached_tokens"]  # 1,200 input, 80 output
    usage = payload["metadata"]["usage_object"]
    usage["completion_tokens_details"] = {"reasoning_tokens": 50, "audio_tokens": 40}
    usage["prompt_tokens_details"]["audio_tokens"] = 100
    event = event_of(payload)
    assert (event["reasoning_tokens"], event["audio_output_tokens"],
            event["audio_input_tokens"]) == (50, 30, 100)


def test_cached_tokens_never_exceed_the_input(payloads: dict[str, Any]) -> None:
    payload = payloads["sdk_success_openai_cached_tokens"]
    payload["metadata"]["usage_object"]["prompt_tokens_details"]["cached_tokens"] = 5000
    assert event_of(payload)["cached_input_tokens"] == 1200


def test_usage_is_read_from_the_response_when_the_metadata_lacks_it(
    payloads: dict[str, Any],
) -> None:
    payload = payloads["sdk_success_openai_cached_tokens"]
    payload["metadata"]["usage_object"] = None
    assert event_of(payload)["cached_input_tokens"] == 1024


def test_a_stream_counts_its_whole_duration(payloads: dict[str, Any]) -> None:
    event = event_of(payloads["sdk_stream"])
    assert (event["input_tokens"], event["output_tokens"]) == (13, 7)
    # endTime - startTime; LiteLLM's response_time (0.42 s) is the time to the first chunk.
    assert event["latency_ms"] == 445.571
    assert event["ts"] == "2026-12-06T05:18:54.550Z"
    assert event["labels"] == {"team": "search"}


def test_a_failure_is_an_error_with_no_tokens(payloads: dict[str, Any]) -> None:
    assert event_of(payloads["sdk_failure_rate_limit"]) == {
        # No response: the payload's id is the call id, used once.
        "event_id": "litellm:7e2484bd-f008-4b55-9431-755fe9250157",
        "ts": "2026-12-06T05:18:54.556Z",
        "model": "gpt-4o",
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_input_tokens": 0,
        "latency_ms": 4.894,
        "status": "error",
        "cache_hit": False,
        "labels": {"team": "search", "api_key": "search-prod"},
    }


def test_a_failed_attempt_and_the_success_after_it_are_two_events(
    payloads: dict[str, Any],
) -> None:
    # A proxy request's retries and fallbacks share its litellm_call_id.
    failure = payloads["sdk_failure_rate_limit"]
    success = payloads["sdk_success_with_metadata"]
    success["litellm_call_id"] = failure["id"] = failure["litellm_call_id"]
    assert event_of(failure)["event_id"] != event_of(success)["event_id"]


def test_a_proxy_key_is_shown_by_its_hash_prefix_only(payloads: dict[str, Any]) -> None:
    payload = payloads["proxy_style_hashed_key"]
    event = event_of(payload)
    assert event["labels"] == {
        "team": "team-7f3a",
        "api_key": hashlib.sha256(RAW_KEY.encode()).hexdigest()[:12],
        "end_user": "customer-42",  # the OpenAI user parameter
        "project": "assistant",  # the key's LiteLLM project
    }
    payload["metadata"]["user_api_key_hash"] = "hashed-jwt-" + "ab" * 32
    assert event_of(payload)["labels"]["api_key"] == "abababababab"
    payload["metadata"]["user_api_key_hash"] = "litellm_proxy_master_key"
    assert event_of(payload)["labels"]["api_key"] == "litellm_proxy_master_key"


@pytest.mark.parametrize(
    "logged_key",
    [
        RAW_KEY,
        "  SK-upper-case-key",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig",
        # LiteLLM logs a key that is neither sk- nor a JWT as it is, unhashed.
        "my-custom-format-key-0123",
        "0123abcd",  # hex, but not a SHA-256
    ],
)
def test_a_key_that_is_not_a_hash_is_never_a_label(
    payloads: dict[str, Any], logged_key: str
) -> None:
    payload = payloads["proxy_style_hashed_key"]
    payload["metadata"]["user_api_key_hash"] = logged_key
    event = event_of(payload)
    assert "api_key" not in event["labels"]
    assert logged_key.strip() not in json.dumps(event)


def test_secret_looking_values_are_skipped_for_the_next_candidate(
    payloads: dict[str, Any],
) -> None:
    payload = payloads["sdk_success_with_metadata"]
    metadata = payload["metadata"]
    metadata["user_api_key_alias"] = RAW_KEY
    metadata["user_api_key_hash"] = hashlib.sha256(b"k").hexdigest()
    metadata["user_api_key_team_alias"] = "sk-team-in-disguise"
    payload["end_user"] = "Bearer abc"
    labels = event_of(payload)["labels"]
    assert labels["api_key"] == hashlib.sha256(b"k").hexdigest()[:12]
    assert labels["team"] == "team-7f3a"
    assert labels["end_user"] == "alice@example.com"
    assert not any(value.lower().startswith(("sk-", "bearer")) for value in labels.values())


def test_request_labels_prefer_the_key_then_spend_metadata_then_tags(
    payloads: dict[str, Any],
) -> None:
    payload = payloads["sdk_success_with_metadata"]
    payload["metadata"]["spend_logs_metadata"] = {"project": "from-spend", "app": 7}
    payload["request_tags"] = ["App: tagged-app ", "app:second", "namespace:", "User-Agent: x"]
    labels = event_of(payload)["labels"]
    assert (labels["project"], labels["app"]) == ("from-spend", "7")
    assert "namespace" not in labels  # an empty tag value is no value
    payload["metadata"]["user_api_key_project_id"] = "proj-1"
    payload["metadata"]["spend_logs_metadata"] = None
    labels = event_of(payload)["labels"]
    assert (labels["project"], labels["app"]) == ("proj-1", "tagged-app")


def test_label_values_are_cut_to_the_contract(payloads: dict[str, Any]) -> None:
    payload = payloads["sdk_success_with_metadata"]
    payload["metadata"]["user_api_key_team_alias"] = "t" * 1000
    assert event_of(payload)["labels"]["team"] == "t" * MAX_LABEL_VALUE_LENGTH


@pytest.mark.parametrize(
    ("end_time", "ts"),
    [
        # The float is 1714564800.250999927…: its exact value would floor to .250.
        (1714564800.251, "2024-05-01T12:00:00.251Z"),
        (1714564800.2509, "2024-05-01T12:00:00.250Z"),  # truncated, as epoch_ms does
        (1714564800.0, "2024-05-01T12:00:00.000Z"),
        (1714564800, "2024-05-01T12:00:00.000Z"),
        (0.001, "1970-01-01T00:00:00.001Z"),
    ],
)
def test_the_event_time_is_the_end_time_to_the_millisecond(
    payloads: dict[str, Any], end_time: float, ts: str
) -> None:
    payload = payloads["sdk_success_with_metadata"]
    payload["endTime"] = end_time
    assert event_of(payload)["ts"] == ts


def test_a_missing_end_time_falls_back_to_the_start(payloads: dict[str, Any]) -> None:
    payload = payloads["sdk_success_with_metadata"]
    del payload["endTime"]
    event = event_of(payload)
    assert event["ts"] == "2026-12-06T05:18:53.846Z"
    assert "latency_ms" not in event


def test_a_long_id_is_hashed_to_fit(payloads: dict[str, Any]) -> None:
    payload = payloads["sdk_success_with_metadata"]
    payload["id"] = "x" * 400
    event_id = event_of(payload)["event_id"]
    assert event_id.startswith("litellm:sha256:") and len(event_id) <= MAX_ID_LENGTH
    assert event_of(payload)["event_id"] == event_id


def test_a_litellm_cache_hit_is_a_cache_hit(payloads: dict[str, Any]) -> None:
    # LiteLLM marks an answer from its own cache so; captured SDK caching needs fastapi.
    payload = payloads["sdk_success_with_metadata"]
    payload["cache_hit"] = True
    assert event_of(payload)["cache_hit"] is True


def test_the_proxy_alias_names_the_model_only_when_the_model_is_empty(
    payloads: dict[str, Any],
) -> None:
    payload = payloads["sdk_success_with_metadata"]
    payload["model_group"] = "company-gpt"
    assert event_of(payload)["model"] == "gpt-4o"
    payload["model"] = ""
    assert event_of(payload)["model"] == "company-gpt"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": None, "litellm_call_id": None}, "neither an id"),
        ({"endTime": None, "startTime": float("nan")}, "endTime"),
        ({"endTime": -1.0}, "endTime"),
        ({"endTime": 1e15}, "year"),
        ({"model": "", "model_group": None}, "no model"),
        ({"model": "m" * 300}, "longer than"),
        ({"prompt_tokens": -1}, "prompt_tokens"),
        ({"completion_tokens": MAX_TOKENS_PER_REQUEST + 1}, "completion_tokens"),
        ({"prompt_tokens": True}, "prompt_tokens"),
        ({"prompt_tokens": 10.0}, "prompt_tokens"),
        ({"status": "partial"}, "status"),
    ],
)
def test_what_cannot_be_an_event_says_which_field(
    payloads: dict[str, Any], change: dict[str, Any], message: str
) -> None:
    payload = payloads["sdk_success_with_metadata"]
    payload.update(change)
    with pytest.raises(LitellmPayloadError, match=message):
        usage_event_from_litellm(payload)


def test_a_payload_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(LitellmPayloadError):
        usage_event_from_litellm([])  # type: ignore[arg-type]


_text = st.text(max_size=300)
_values = st.one_of(st.none(), _text, st.integers(), st.booleans(), st.floats(),
                    st.lists(_text, max_size=3), st.dictionaries(_text, _text, max_size=3))


@given(
    metadata=st.dictionaries(
        st.sampled_from([
            "user_api_key_team_alias", "team_alias", "user_api_key_team_id", "team_id",
            "user_api_key_alias", "user_api_key_hash", "user_api_key_end_user_id",
            "user_api_key_project_alias", "user_api_key_project_id", "spend_logs_metadata",
            "usage_object",
        ]),
        _values,
    ),
    tags=st.one_of(st.none(), st.lists(st.one_of(_text, st.integers()), max_size=8)),
    end_user=_values,
    tokens=st.tuples(st.integers(0, MAX_TOKENS_PER_REQUEST), st.integers(0, 10**6)),
    cached=_values,
)
def test_any_metadata_gives_a_valid_event_without_secrets(
    captured: dict[str, Any], metadata: dict[str, Any], tags: Any, end_user: Any,
    tokens: tuple[int, int], cached: Any,
) -> None:
    payload = copy.deepcopy(captured["sdk_success_with_metadata"])
    payload["metadata"] = metadata
    payload["request_tags"] = tags
    payload["end_user"] = end_user
    payload["prompt_tokens"], payload["completion_tokens"] = tokens
    payload["response"] = {"usage": {"prompt_tokens_details": {"cached_tokens": cached}}}
    event = event_of(payload)
    assert event["cached_input_tokens"] <= event["input_tokens"]
    for value in event["labels"].values():
        assert value and not value.lower().startswith(("sk-", "bearer "))
