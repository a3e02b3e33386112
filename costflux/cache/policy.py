"""What may be served from the semantic cache, under which key, and what counts as a hit.

Pure: plain values in, plain values out; no I/O, no clock, no environment.

A request is split in two. Everything that changes the answer except the last user turn —
endpoint, model, sampling parameters, tools, the earlier messages (system prompt included),
the tenant — is hashed into an exact *partition*: entries are only ever compared within one.
The last user turn (or the completion prompt) is the *semantic text* that gets embedded, so
a paraphrased question in the same context can be answered by an earlier answer, and a
different system prompt, model or temperature never can.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

__all__ = [
    "ANSWER_NEUTRAL_FIELDS",
    "Bypass",
    "CachePolicy",
    "Candidate",
    "Lookup",
    "TokenUsage",
    "best_hit",
    "classify",
    "evictions_needed",
    "labels_from_headers",
    "text_digest",
]

Endpoint = Literal["chat", "completions"]

#: Request fields that do not change the answer's content, so they stay out of the partition.
#: ``stream`` is handled apart (streamed requests are passed through), ``cache`` is ours.
ANSWER_NEUTRAL_FIELDS: Final = frozenset(
    {"stream", "stream_options", "user", "cache", "metadata", "store", "service_tier"}
)
#: OpenAI's default when a request names no temperature.
DEFAULT_TEMPERATURE: Final = 1.0
LABEL_HEADER_PREFIX: Final = "x-costflux-"


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """The cache's safety settings, as plain values.

    >>> CachePolicy(threshold=0.95, max_temperature=1.0, tenant_label="team").threshold
    0.95
    """

    threshold: float = 0.95
    max_temperature: float = 1.0
    #: Label whose value isolates entries (one tenant never sees another's answers); ``None``
    #: shares entries between all tenants.
    tenant_label: str | None = "team"

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"similarity threshold must be in (0, 1], got {self.threshold}")
        if self.max_temperature < 0:
            raise ValueError(f"max temperature must be 0 or more, got {self.max_temperature}")


@dataclass(frozen=True, slots=True)
class Bypass:
    """The request goes upstream without touching the cache, for ``reason``."""

    reason: str


@dataclass(frozen=True, slots=True)
class Lookup:
    """The request may be answered from ``partition`` by an entry similar to ``text``."""

    partition: str
    text: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored entry found near the query: its partition, exact vector similarity and, for
    a prompt too long to embed whole, the digest of its full text."""

    entry_id: int
    partition: str
    similarity: float
    text_digest: str | None


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens of one answer, as the usage event carries them."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0

    @classmethod
    def of(cls, fields: Mapping[str, int]) -> TokenUsage:
        """The text and cache-read counts of a usage contract's fields (what a stored answer
        keeps: a hit's tokens are savings, priced as input, cache reads and output)."""
        return cls(fields.get("input_tokens", 0), fields.get("output_tokens", 0),
                   fields.get("cached_input_tokens", 0))

    def fields(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_input_tokens": self.cached_input_tokens}


def classify(endpoint: Endpoint, body: Mapping[str, Any], labels: Mapping[str, str],
             policy: CachePolicy) -> Lookup | Bypass:
    """Decide whether a request may use the cache, and under which partition and text."""
    if body.get("stream") is True:
        return Bypass("stream")
    if body.get("cache") is False:
        return Bypass("cache_false")
    temperature = body.get("temperature", DEFAULT_TEMPERATURE)
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE
    if not isinstance(temperature, int | float) or isinstance(temperature, bool):
        return Bypass("bad_temperature")
    if temperature > policy.max_temperature:
        return Bypass("temperature")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return Bypass("no_model")
    split = _split_prompt(endpoint, body)
    if isinstance(split, Bypass):
        return split
    context, text = split
    params = {k: v for k, v in body.items()
              if k not in ANSWER_NEUTRAL_FIELDS and k not in ("messages", "prompt")}
    tenant = labels.get(policy.tenant_label, "") if policy.tenant_label else None
    material = {"endpoint": endpoint, "params": params, "context": context, "tenant": tenant}
    try:
        encoded = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return Bypass("unencodable")
    return Lookup(hashlib.sha256(encoded).hexdigest(), text)


def _split_prompt(endpoint: Endpoint, body: Mapping[str, Any]) -> tuple[Any, str] | Bypass:
    """(exact context, semantic text) of a request, or why it cannot be split."""
    if endpoint == "completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt.strip():
            return Bypass("prompt_not_text")  # token arrays, batches: not embeddable as one text
        return None, prompt
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Bypass("no_messages")
    last = messages[-1]
    if not isinstance(last, dict) or last.get("role") != "user":
        return Bypass("last_message_not_user")
    text = _message_text(last.get("content"))
    if text is None:
        return Bypass("content_not_text")  # images, audio: the embedding would not see them
    rest = {k: v for k, v in last.items() if k != "content"}
    return [*messages[:-1], rest], text


def _message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content if content.strip() else None
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            if not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        joined = "\n".join(parts)
        return joined if joined.strip() else None
    return None


def text_digest(text: str) -> str:
    """Digest of a prompt's full text (for prompts longer than the embedding sees)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def best_hit(candidates: list[Candidate], partition: str, threshold: float,
             query_digest: str | None) -> Candidate | None:
    """The most similar candidate that may answer the query, if any.

    Only entries of the query's partition count, at or above the threshold. When either
    prompt was too long for the embedding to see whole (a digest is set), the embeddings say
    nothing about the unseen tail, so only the exact same text may answer.
    """
    best = None
    for candidate in candidates:
        if candidate.partition != partition or candidate.similarity < threshold:
            continue
        if (candidate.text_digest or query_digest) and candidate.text_digest != query_digest:
            continue
        if best is None or candidate.similarity > best.similarity:
            best = candidate
    return best


def evictions_needed(entries: int, max_entries: int) -> int:
    """How many least recently used entries to drop so that at most ``max_entries`` remain."""
    return max(0, entries - max_entries)


def labels_from_headers(headers: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """Event labels: ``X-Costflux-<Label>`` headers over the configured defaults.

    >>> labels_from_headers({"X-Costflux-Team": "search"}, {"team": "x", "namespace": "ml"})
    {'team': 'search', 'namespace': 'ml'}
    """
    labels = dict(defaults)
    for name, value in headers.items():
        if name.lower().startswith(LABEL_HEADER_PREFIX) and len(name) > len(LABEL_HEADER_PREFIX):
            labels[name[len(LABEL_HEADER_PREFIX):].lower().replace("-", "_")] = value
    return labels
