"""What a proxied LLM request may use and what its answer did use, in costflux's terms. Pure.

Five request paths are understood (:data:`ROUTES`): OpenAI's Chat Completions, Completions,
Responses and Embeddings APIs, and Anthropic's Messages API. For each, this module reads

* the usage an answer reports, JSON (:func:`answer_usage`) or a server-sent-events stream
  (:class:`StreamUsage`), as the usage contract's token fields (``schemas.usage``): the input
  and output totals, the cache reads within the input (always), and the other kinds of tokens
  within each total (cache writes, audio, reasoning) when non-zero, each capped at what its
  total leaves (:func:`costflux.core.litellm_usage.token_parts`, shared with LiteLLM's
  payloads);
* from the request: the model (:func:`request_model`), a bound of what it may use
  (:func:`reservation_bound`) and the end user it is for (:func:`end_user`).

Where the providers differ:

* OpenAI's ``prompt_tokens`` (Responses API: ``input_tokens``) include the cached tokens;
  Anthropic's ``input_tokens`` are only those after the last cache breakpoint, so the input
  total is ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``.
* Cache writes: Anthropic's ``cache_creation_input_tokens``, of which
  ``cache_creation.ephemeral_1h_input_tokens`` lived an hour (the rest five minutes);
  OpenAI's ``…_tokens_details.cache_write_tokens`` are ``cache_write_input_tokens`` too,
  priced as input unless the price file gives the model a cache-write price.
* Reasoning: OpenAI's ``…_tokens_details.reasoning_tokens``, Anthropic's
  ``output_tokens_details.thinking_tokens``; both are already in the output total.
* Streams: a Chat Completions or Completions stream reports usage only when the request asked
  for ``stream_options: {"include_usage": true}`` (in a last chunk with no choices); the
  Responses API in its ``response.completed`` (or ``response.incomplete``, ``response.failed``)
  event; Anthropic in ``message_start`` (input and cache counts, so far) and the last
  ``message_delta`` (cumulative output, and, when the API sends them, final input and cache
  counts: after server-side tools ran these exceed ``message_start``'s).

>>> answer_usage("messages", {"usage": {"input_tokens": 12, "cache_read_input_tokens": 1024,
...                                     "cache_creation_input_tokens": 0, "output_tokens": 5}})
{'input_tokens': 1036, 'output_tokens': 5, 'cached_input_tokens': 1024}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, TypeGuard

import orjson

from costflux.core.litellm_usage import token_parts
from costflux.gateway.sse import SseDataReader
from costflux.schemas._types import MAX_ID_LENGTH, MAX_LABEL_VALUE_LENGTH

__all__ = [
    "ROUTES",
    "Route",
    "StreamUsage",
    "answer_usage",
    "end_user",
    "request_model",
    "reservation_bound",
]

Route = Literal["chat", "completions", "responses", "embeddings", "messages"]

#: The request paths the gateway understands, and the API each is.
ROUTES: Final[dict[str, Route]] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/messages": "messages",
}

#: Responses API events that carry the finished response, its usage included.
_RESPONSE_DONE: Final = frozenset({"response.completed", "response.incomplete",
                                   "response.failed"})
#: Label values that may be credentials: OpenAI-style keys and Authorization header values.
_SECRET_PREFIXES: Final = ("sk-", "bearer ")


class _NoUsage(Exception):
    """The usage object is missing a total or holds something other than a token count."""


def answer_usage(route: Route, answer: Mapping[str, Any]) -> dict[str, int] | None:
    """The token fields of a JSON (not streamed) answer's usage, or None if it reports none.

    None also when a count is not a non-negative integer: a usage object that cannot be read
    is not taken for zero tokens.

    >>> answer_usage("chat", {"usage": {"prompt_tokens": 2006, "completion_tokens": 300,
    ...                                 "prompt_tokens_details": {"cached_tokens": 1920}}})
    {'input_tokens': 2006, 'output_tokens': 300, 'cached_input_tokens': 1920}
    >>> answer_usage("chat", {"choices": []}) is None
    True
    """
    return _usage_fields(route, answer.get("usage"))


class StreamUsage:
    """The usage a streamed answer reports, read from its server-sent events as they pass by.

    Feed it every piece of the stream, in order, then close it; pieces may split lines (and
    UTF-8 characters) anywhere. Events that are not JSON are skipped.

    >>> stream = StreamUsage("chat")
    >>> stream.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 9, "completion_')
    >>> stream.feed(b'tokens": 2}}\\n\\ndata: [DONE]\\n\\n')
    >>> stream.close()
    >>> stream.usage
    {'input_tokens': 9, 'output_tokens': 2, 'cached_input_tokens': 0}
    """

    def __init__(self, route: Route) -> None:
        self._route: Route = route
        self._events = SseDataReader()
        self._usage: Mapping[str, Any] | None = None

    def feed(self, chunk: bytes) -> None:
        """Read another piece of the stream."""
        for data in self._events.feed(chunk):
            self._read_event(data)

    def close(self) -> None:
        """Read what the stream left unfinished (a last event with no blank line after it)."""
        for data in self._events.close():
            self._read_event(data)

    @property
    def usage(self) -> dict[str, int] | None:
        """The token fields of the usage read so far, or None if the stream reported none."""
        return _usage_fields(self._route, self._usage)

    def _read_event(self, data: bytes) -> None:
        if b"usage" not in data:  # most events are content deltas: skip decoding them
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        if self._route == "messages":
            self._read_anthropic(event)
        elif self._route == "responses":
            if event.get("type") in _RESPONSE_DONE:
                usage = _mapping(event.get("response")).get("usage")
                if isinstance(usage, Mapping):
                    self._usage = usage
        elif isinstance(event.get("usage"), Mapping):
            # The include_usage chunk; servers that count as they go (vLLM's continuous usage
            # stats) send a cumulative usage in every chunk, and the last one holds.
            self._usage = event["usage"]

    def _read_anthropic(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            usage = _mapping(event.get("message")).get("usage")
            self._usage = dict(usage) if isinstance(usage, Mapping) else None
        elif kind == "message_delta" and isinstance(event.get("usage"), Mapping):
            # Cumulative counts: each one given (not null) replaces the one before.
            merged = dict(self._usage or {})
            merged.update((k, v) for k, v in event["usage"].items() if v is not None)
            self._usage = merged


def request_model(route: Route, body: Mapping[str, Any]) -> str | None:
    """The model the request names (``model`` in every API), or None if it names none usable.

    >>> request_model("messages", {"model": "claude-sonnet-4-5", "max_tokens": 1024})
    'claude-sonnet-4-5'
    """
    model = body.get("model")
    if isinstance(model, str) and model.strip() and len(model) <= MAX_ID_LENGTH:
        return model
    return None


def reservation_bound(route: Route, body: Mapping[str, Any], raw_size: int
                      ) -> tuple[int, int | None]:
    """Upper bounds of the request's input tokens and its output tokens (None: no limit set).

    The input bound is ``raw_size``, the request body's size in bytes: the OpenAI and Anthropic
    models' tokenizers are byte-level BPEs, in which every token stands for at least one byte of
    text, and the prompt's text is inside the body (JSON escaping only makes it longer; token
    ids sent as numbers take at least a digit each). It is no bound of what the provider adds
    beyond the body: conversation state it keeps (the Responses API's
    ``previous_response_id``, ``conversation``, ``prompt``), files and images named by id or
    URL, the results of server-side tools (web search, code execution, file search), which
    come back as input, and the system prompt Anthropic adds for tool use. Reserve with it and
    settle with the answer's usage.

    The output bound is the request's limit: ``max_completion_tokens`` or ``max_tokens``
    (Chat Completions; the larger if both), ``max_tokens`` (Completions, Messages),
    ``max_output_tokens`` (Responses API), each including reasoning tokens; times ``n`` (and
    Completions' ``best_of``) for requests that generate several answers. Embeddings have no
    output. None when the request sets no limit; the Completions API then stops at 16
    tokens, other servers on the same path may not.

    >>> reservation_bound("chat", {"model": "gpt-4o", "max_completion_tokens": 300, "n": 2}, 412)
    (412, 600)
    >>> reservation_bound("embeddings", {"model": "text-embedding-3-small", "input": "hi"}, 61)
    (61, 0)
    """
    if raw_size < 0:
        raise ValueError(f"raw_size is a request body's size in bytes, not {raw_size}")
    if route == "embeddings":
        return raw_size, 0
    limits = {
        "chat": ("max_completion_tokens", "max_tokens"),
        "completions": ("max_tokens",),
        "responses": ("max_output_tokens",),
        "messages": ("max_tokens",),
    }[route]
    given = [value for value in map(body.get, limits) if _is_count(value)]
    if not given:
        return raw_size, None
    answers = {"chat": ("n",), "completions": ("n", "best_of")}.get(route, ())
    copies = max((value for value in map(body.get, answers) if _is_count(value)), default=1)
    return raw_size, max(given) * max(copies, 1)


def end_user(route: Route, body: Mapping[str, Any], header_value: str | None) -> str:
    """Whom the request is for: the ``X-Costflux-User`` header, else the request's own field.

    OpenAI's APIs carry ``user`` (and, since it was deprecated, ``safety_identifier``, a
    stable hashed id of the end user, in Chat Completions and the Responses API); Anthropic's
    ``metadata.user_id``. The first usable value is taken, cut to the 256 characters of a label
    value; "" when there is none. A value that starts with ``sk-`` or ``Bearer`` is never used:
    it may be a credential.

    >>> end_user("messages", {"metadata": {"user_id": "13803d75-b4b5-4c3e"}}, None)
    '13803d75-b4b5-4c3e'
    >>> end_user("chat", {"user": "sk-proj-abc"}, None)
    ''
    """
    if route == "messages":
        fields: tuple[object, ...] = (_mapping(body.get("metadata")).get("user_id"),)
    else:
        fields = (body.get("user"), body.get("safety_identifier"))
    for value in (header_value, *fields):
        if isinstance(value, str):
            text = value.strip()
            if text and not text.lower().startswith(_SECRET_PREFIXES):
                return text[:MAX_LABEL_VALUE_LENGTH]
    return ""


def _usage_fields(route: Route, usage: object) -> dict[str, int] | None:
    if not isinstance(usage, Mapping):
        return None
    try:
        if route == "messages":
            return _anthropic_fields(usage)
        if route == "responses":
            return _responses_fields(usage)
        return _openai_fields(route, usage)
    except _NoUsage:
        return None


def _openai_fields(route: Route, usage: Mapping[str, Any]) -> dict[str, int]:
    """Chat Completions, Completions and Embeddings (``CompletionUsage``)."""
    if route == "embeddings" and usage.get("prompt_tokens") is None:
        prompt = _tokens(usage, "total_tokens", required=True)
    else:
        prompt = _tokens(usage, "prompt_tokens", required=True)
    output = 0 if route == "embeddings" else _tokens(usage, "completion_tokens")
    details = _mapping(usage.get("prompt_tokens_details"))
    completion = _mapping(usage.get("completion_tokens_details"))
    return _fields(
        prompt, output, _tokens(details, "cached_tokens"),
        cache_writes=_tokens(details, "cache_write_tokens"),
        audio_input=_tokens(details, "audio_tokens"),
        reasoning=_tokens(completion, "reasoning_tokens"),
        audio_output=_tokens(completion, "audio_tokens"),
    )


def _responses_fields(usage: Mapping[str, Any]) -> dict[str, int]:
    """The Responses API (``ResponseUsage``)."""
    details = _mapping(usage.get("input_tokens_details"))
    return _fields(
        _tokens(usage, "input_tokens", required=True), _tokens(usage, "output_tokens"),
        _tokens(details, "cached_tokens"),
        cache_writes=_tokens(details, "cache_write_tokens"),
        reasoning=_tokens(_mapping(usage.get("output_tokens_details")), "reasoning_tokens"),
    )


def _anthropic_fields(usage: Mapping[str, Any]) -> dict[str, int]:
    """Anthropic's Messages API (``Usage``; a stream's merged ``message_start`` and
    ``message_delta`` usage has the same fields)."""
    reads = _tokens(usage, "cache_read_input_tokens")
    breakdown = _mapping(usage.get("cache_creation"))
    by_ttl = _tokens(breakdown, "ephemeral_5m_input_tokens"), _tokens(
        breakdown, "ephemeral_1h_input_tokens")
    # The total is the breakdown's sum; older answers (and some proxies) give only the total.
    writes = (sum(by_ttl) if usage.get("cache_creation_input_tokens") is None
              else _tokens(usage, "cache_creation_input_tokens"))
    fields = _fields(
        _tokens(usage, "input_tokens", required=True) + reads + writes,
        _tokens(usage, "output_tokens"), reads,
        cache_writes=writes, cache_writes_1h=by_ttl[1],
        reasoning=_tokens(_mapping(usage.get("output_tokens_details")), "thinking_tokens"),
    )
    # Server-side web searches are billed per search, beside the tokens.
    searches = _mapping(usage.get("server_tool_use")).get("web_search_requests")
    if _is_count(searches) and searches:
        fields["web_search_calls"] = searches
    return fields


def _fields(input_tokens: int, output_tokens: int, cached: int, **parts: int
            ) -> dict[str, int]:
    cached = min(cached, input_tokens)
    fields = {"input_tokens": input_tokens, "output_tokens": output_tokens,
              "cached_input_tokens": cached}
    fields.update(token_parts(input_tokens - cached, output_tokens, **parts))
    return fields


def _tokens(usage: Mapping[str, Any], field: str, *, required: bool = False) -> int:
    value = usage.get(field)
    if value is None and not required:
        return 0  # absent, or null as Anthropic's optional counts may be
    if not _is_count(value):
        raise _NoUsage(field)
    return value


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
