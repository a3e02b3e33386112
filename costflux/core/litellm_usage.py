"""LiteLLM's per-call logging payload as a costflux usage event (``llm.usage.v1``). Pure.

LiteLLM hands every callback one ``StandardLoggingPayload`` per finished call, as
``kwargs["standard_logging_object"]``, in the SDK and in the proxy alike. This module turns it
into one usage event; ``costflux.integrations.litellm`` sends it. What is read, and why:

* **event_id** ``litellm:<litellm_call_id>:<id>``, or ``litellm:<litellm_call_id>`` when the
  two are the same. LiteLLM sets the payload's ``id`` to the response's id (``chatcmpl-…``) and,
  for a call that got no response (a failure), to the call id. Neither alone is enough: the
  call id is shared by every retry and fallback attempt of one proxy request (and a client may
  set it, ``x-litellm-call-id``), so a failed attempt would swallow the success after it; and
  response ids are not unique everywhere (Ollama's OpenAI endpoint numbers them 0-998). Both
  are fixed for a call, so a log delivered twice counts once downstream. An id too long for
  the contract is replaced by its SHA-256.
* **ts** ``endTime`` (epoch seconds, a float), truncated to the millisecond through the float's
  shortest decimal form, so ``…800.251`` is ``.251`` and never ``.250``. **latency_ms** is
  ``endTime - startTime``: the whole call, the stream included (LiteLLM's own
  ``response_time`` is the time to the first token for streams).
* **model** ``model``: the model LiteLLM called, as the caller named it to the SDK or as the
  proxy deployment's ``litellm_params.model`` names it, with LiteLLM's provider prefix removed
  (``gpt-4o``, ``claude-3-5-sonnet-20240620``; Bedrock keeps ``bedrock/…``). That is the key
  LiteLLM's own price catalogue uses for OpenAI and Anthropic models, so a price file made by
  ``costflux pricing import-litellm`` prices it. Not ``model_group`` (the proxy's public alias,
  any name an operator chose; used only when ``model`` is empty) and not the response's model
  (the provider's dated snapshot, e.g. ``gpt-4o-2024-08-06``, absent when the call failed).
* **tokens** ``prompt_tokens`` and ``completion_tokens`` (0 when LiteLLM got no usage, as for
  most failures); **cached_input_tokens** from the usage object's
  ``prompt_tokens_details.cached_tokens`` (OpenAI, and where LiteLLM maps Anthropic's and
  DeepSeek's), else ``cache_read_input_tokens``, capped at the input tokens. Anthropic's cache
  writes (``cache_creation_input_tokens``; the 1-hour part from
  ``cache_creation.ephemeral_1h_input_tokens``), audio input and output
  (``…_tokens_details.audio_tokens``) and reasoning tokens
  (``completion_tokens_details.reasoning_tokens``) become their own fields, each capped at
  what its total leaves, so they are billed at their own prices.
* **status** ``ok`` for LiteLLM's ``success``, ``error`` for ``failure``; **cache_hit** when
  LiteLLM answered from its own cache (the tokens were not sent upstream: costflux counts them
  as savings, not cost).
* **labels**, each the first clean value of: ``team`` the key's team alias, else its team id;
  ``api_key`` the key alias, else the first 12 hex digits of LiteLLM's SHA-256 of the key
  (``user_api_key_hash``; LiteLLM's JWT hash ``hashed-jwt-<sha256>`` likewise, and its master key
  as ``litellm_proxy_master_key``); anything else there is left out, since LiteLLM logs some
  keys it does not hash as they are. ``end_user`` the payload's end user, else the key's end
  user, else the OpenAI ``user`` parameter; ``project`` the key's LiteLLM project alias, else its
  id; then ``project``, ``app`` and ``namespace`` from the request's ``spend_logs_metadata``
  (LiteLLM's documented spend-tracking metadata) or its tags written ``key:value`` (as LiteLLM's
  tag-based spend tracking shows them, e.g. ``"tags": ["app:web"]``). A value that starts with
  ``sk-`` or ``Bearer`` is never used; values are cut to the contract's 256 characters.

>>> event = usage_event_from_litellm({
...     "id": "chatcmpl-1", "litellm_call_id": "0f1e", "status": "success", "model": "gpt-4o",
...     "startTime": 1714564799.5, "endTime": 1714564800.251,
...     "prompt_tokens": 374, "completion_tokens": 44,
...     "metadata": {"user_api_key_team_alias": "search", "user_api_key_alias": "search-prod",
...                  "usage_object": {"prompt_tokens_details": {"cached_tokens": 256}}},
...     "request_tags": ["app:web"],
... })
>>> event["event_id"], event["ts"], event["latency_ms"], event["cached_input_tokens"]
('litellm:0f1e:chatcmpl-1', '2024-05-01T12:00:00.251Z', 751.0, 256)
>>> event["labels"]
{'team': 'search', 'api_key': 'search-prod', 'app': 'web'}
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

from costflux.core.errors import InputError
from costflux.schemas._types import (
    MAX_ID_LENGTH,
    MAX_LABEL_VALUE_LENGTH,
    MAX_TOKENS_PER_REQUEST,
    from_epoch_ms,
)

__all__ = ["EVENT_ID_PREFIX", "LitellmPayloadError", "token_parts", "usage_event_from_litellm"]

EVENT_ID_PREFIX: Final = "litellm:"
#: LiteLLM's SHA-256 of a virtual key, and of a JWT (``hashed-jwt-<sha256>``).
_KEY_HASH: Final = re.compile(r"^(?:hashed-jwt-)?([0-9a-f]{64})$")
#: What LiteLLM logs as the key when the proxy's master key was used: a constant, not a key.
_MASTER_KEY_ALIAS: Final = "litellm_proxy_master_key"
_KEY_HASH_SHOWN: Final = 12
#: Label values that may be credentials: OpenAI-style keys (LiteLLM's virtual keys look the
#: same) and Authorization header values.
_SECRET_PREFIXES: Final = ("sk-", "bearer ")
#: Labels filled from the request's spend_logs_metadata or its ``key:value`` tags.
_REQUEST_LABELS: Final = ("project", "app", "namespace")
_MS: Final = Decimal(1000)


class LitellmPayloadError(InputError):
    """A LiteLLM logging payload that cannot be made a valid usage event."""


def usage_event_from_litellm(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``llm.usage.v1`` event of one LiteLLM call's ``standard_logging_object``.

    The result always passes ``costflux.schemas.usage.UsageEvent``; a payload that cannot give one
    (no id, no time, no model, impossible token counts, an unknown status) raises
    :class:`LitellmPayloadError`, whose message names the field and never repeats a value.
    """
    if not isinstance(payload, Mapping):
        raise LitellmPayloadError("the standard_logging_object is not a mapping")
    metadata = _mapping(payload.get("metadata"))
    ts_ms = _event_time_ms(payload)
    input_tokens = _token_count(payload, "prompt_tokens")
    event: dict[str, Any] = {
        "event_id": _event_id(payload),
        "ts": _rfc3339(ts_ms),
        "model": _model(payload),
        "input_tokens": input_tokens,
        "output_tokens": _token_count(payload, "completion_tokens"),
        "cached_input_tokens": min(_cached_tokens(payload, metadata), input_tokens),
        "status": _status(payload),
        "labels": _labels(payload, metadata),
        "cache_hit": payload.get("cache_hit") is True,
    }
    event.update(_other_kinds(_usage(payload, metadata), input_tokens - event[
        "cached_input_tokens"], event["output_tokens"]))
    latency_ms = _latency_ms(payload)
    if latency_ms is not None:
        event["latency_ms"] = latency_ms
    return event


def _other_kinds(usage: Mapping[str, Any], input_left: int, output_left: int
                 ) -> dict[str, int]:
    """The usage fields of the kinds beyond text and cache reads that the usage object
    reports, each capped at what its total leaves (only those that are non-zero)."""
    prompt = _mapping(usage.get("prompt_tokens_details"))
    completion = _mapping(usage.get("completion_tokens_details"))
    return token_parts(
        input_left, output_left,
        cache_writes=_count(usage.get("cache_creation_input_tokens")),
        cache_writes_1h=_count(_mapping(usage.get("cache_creation")).get(
            "ephemeral_1h_input_tokens")),
        audio_input=_count(prompt.get("audio_tokens")),
        reasoning=_count(completion.get("reasoning_tokens")),
        audio_output=_count(completion.get("audio_tokens")),
    )


def token_parts(input_left: int, output_left: int, *, cache_writes: int = 0,
                cache_writes_1h: int = 0, audio_input: int = 0, reasoning: int = 0,
                audio_output: int = 0) -> dict[str, int]:
    """The usage fields of the kinds of tokens beyond text and cache reads, only those that
    are non-zero, each capped at what its total leaves.

    ``input_left`` is the input total less the cache reads, ``output_left`` the output total;
    ``cache_writes`` is every cache write, of which ``cache_writes_1h`` lived an hour (the
    rest five minutes). Input parts are taken in the order 1-hour writes, 5-minute writes,
    audio; output parts reasoning, then audio. The contract requires the parts of a total to
    fit in it, and a provider's counts that do not are cut rather than dropped.

    >>> token_parts(100, 10, cache_writes=80, cache_writes_1h=30, audio_input=40)
    {'cache_write_1h_input_tokens': 30, 'cache_write_input_tokens': 50, 'audio_input_tokens': 20}
    """
    writes = max(cache_writes, 0)
    writes_1h = max(min(cache_writes_1h, writes), 0)
    fields: dict[str, int] = {}
    for name, value, side in (
        ("cache_write_1h_input_tokens", writes_1h, "input"),
        ("cache_write_input_tokens", writes - writes_1h, "input"),
        ("audio_input_tokens", audio_input, "input"),
        ("reasoning_tokens", reasoning, "output"),
        ("audio_output_tokens", audio_output, "output"),
    ):
        left = input_left if side == "input" else output_left
        taken = min(value, left)
        if taken > 0:
            fields[name] = taken
            if side == "input":
                input_left -= taken
            else:
                output_left -= taken
    return fields


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _event_id(payload: Mapping[str, Any]) -> str:
    parts = list(dict.fromkeys(
        value for value in (payload.get("litellm_call_id"), payload.get("id"))
        if isinstance(value, str) and value
    ))
    if not parts:
        raise LitellmPayloadError("the payload has neither an id nor a litellm_call_id")
    event_id = EVENT_ID_PREFIX + ":".join(parts)
    if len(event_id) <= MAX_ID_LENGTH:
        return event_id
    return f"{EVENT_ID_PREFIX}sha256:{hashlib.sha256(event_id.encode()).hexdigest()}"


def _seconds(payload: Mapping[str, Any], field: str) -> Decimal | None:
    """An epoch-seconds field as the decimal its float was written from, or None if unusable."""
    value = payload.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        # repr is the shortest decimal that reads back as this float: the time LiteLLM meant.
        return Decimal(repr(value))
    return Decimal(value)


def _event_time_ms(payload: Mapping[str, Any]) -> int:
    end = _seconds(payload, "endTime")
    if end is None:
        end = _seconds(payload, "startTime")
    if end is None or end < 0:
        raise LitellmPayloadError("the payload has no usable endTime or startTime")
    return int((end * _MS).to_integral_value(rounding=ROUND_FLOOR))


def _rfc3339(ts_ms: int) -> str:
    try:
        moment = from_epoch_ms(ts_ms)
    except OverflowError as exc:
        raise LitellmPayloadError("endTime is beyond the year 9999") from exc
    if moment.year > 9998:
        raise LitellmPayloadError("endTime is beyond the year 9998")
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ts_ms % 1000:03d}Z"


def _latency_ms(payload: Mapping[str, Any]) -> float | None:
    start, end = _seconds(payload, "startTime"), _seconds(payload, "endTime")
    if start is None or end is None:
        return None
    return max(0.0, round(float((end - start) * _MS), 3))


def _model(payload: Mapping[str, Any]) -> str:
    for field in ("model", "model_group"):
        value = payload.get(field)
        if isinstance(value, str) and value.strip():
            if len(value) > MAX_ID_LENGTH:
                raise LitellmPayloadError(f"{field} is longer than {MAX_ID_LENGTH} characters")
            return value
    raise LitellmPayloadError("the payload names no model (model and model_group are empty)")


def _token_count(payload: Mapping[str, Any], field: str) -> int:
    value = payload.get(field)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise LitellmPayloadError(f"{field} is not an integer")
    if not 0 <= value <= MAX_TOKENS_PER_REQUEST:
        raise LitellmPayloadError(f"{field} is outside 0..{MAX_TOKENS_PER_REQUEST}")
    return value


def _usage(payload: Mapping[str, Any], metadata: Mapping[str, Any]) -> Mapping[str, Any]:
    """LiteLLM's usage object: in the metadata, the hidden params, or the logged response."""
    for usage in (
        metadata.get("usage_object"),
        _mapping(payload.get("hidden_params")).get("usage_object"),
        _mapping(payload.get("response")).get("usage"),
    ):
        if isinstance(usage, Mapping) and usage:
            return usage
    return {}


def _cached_tokens(payload: Mapping[str, Any], metadata: Mapping[str, Any]) -> int:
    usage = _usage(payload, metadata)
    details = _mapping(usage.get("prompt_tokens_details"))
    for value in (details.get("cached_tokens"), usage.get("cache_read_input_tokens")):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _status(payload: Mapping[str, Any]) -> str:
    status = payload.get("status")
    if status == "success":
        return "ok"
    if status == "failure":
        return "error"
    raise LitellmPayloadError("status is neither 'success' nor 'failure'")


def _labels(payload: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, str]:
    spend_metadata = _mapping(metadata.get("spend_logs_metadata"))
    tags = dict(_tag_pairs(payload.get("request_tags")))
    candidates: dict[str, Iterable[object]] = {
        "team": (
            metadata.get("user_api_key_team_alias"),
            metadata.get("team_alias"),
            metadata.get("user_api_key_team_id"),
            metadata.get("team_id"),
        ),
        "api_key": (
            metadata.get("user_api_key_alias"),
            _key_hash_shown(metadata.get("user_api_key_hash")),
        ),
        "end_user": (
            payload.get("end_user"),
            metadata.get("user_api_key_end_user_id"),
            _mapping(payload.get("model_parameters")).get("user"),
        ),
    }
    for name in _REQUEST_LABELS:
        key_project = (
            (metadata.get("user_api_key_project_alias"), metadata.get("user_api_key_project_id"))
            if name == "project" else ()
        )
        candidates[name] = (*key_project, spend_metadata.get(name), tags.get(name))
    labels: dict[str, str] = {}
    for name, values in candidates.items():
        value = next((clean for clean in map(_label_value, values) if clean is not None), None)
        if value is not None:
            labels[name] = value
    return labels


def _key_hash_shown(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    if value == _MASTER_KEY_ALIAS:
        return value
    match = _KEY_HASH.match(value)
    return match[1][:_KEY_HASH_SHOWN] if match else None


def _tag_pairs(tags: object) -> Iterator[tuple[str, str]]:
    """The first ``key:value`` tag of each wanted key, from LiteLLM's ``request_tags``."""
    if not isinstance(tags, list):
        return
    seen: set[str] = set()
    for tag in tags:
        if not isinstance(tag, str) or ":" not in tag:
            continue
        key, _, value = tag.partition(":")
        key = key.strip().lower()
        if key in _REQUEST_LABELS and key not in seen:
            seen.add(key)
            yield key, value


def _label_value(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value).strip()
    if not text or text.lower().startswith(_SECRET_PREFIXES):
        return None
    return text[:MAX_LABEL_VALUE_LENGTH]


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
