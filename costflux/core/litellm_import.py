"""LiteLLM's price catalogue (``model_prices_and_context_window.json``) as a costflux price file.

LiteLLM prices in $/token floats; the price file is in $/1K tokens. Each float is read through
its shortest repr (``money.to_decimal``) and scaled with Decimal, so 2.5e-06 becomes exactly
0.0025, never 0.0025000000000000005. Kept: entries whose ``mode`` is priced per text token
(chat, completion, responses) with both token prices, and embeddings with an input price (they
produce no output tokens, so a missing output price is 0). Everything else is skipped and
counted per reason, never silently dropped.

``cache_read_input_token_cost`` is the cached-input price; when absent, the key is left out so
the price file's default (cached = input price) applies rather than a made-up discount. So
for every other kind: cache writes (5-minute and 1-hour), audio and image tokens in and out,
reasoning tokens. ``<price>_above_<N>k_tokens`` keys become ``tiers``; a tier exists where
LiteLLM has one, that is where ``input_cost_per_token_above_<N>k_tokens`` is set. The batch
API's prices (``_batches``) become ``batch``, the ``_priority`` and ``_flex`` ones
``service_tiers``; ``search_context_cost_per_query`` (per web search, by context size) becomes
``per_web_search_call`` at the medium size, OpenAI's default; ``litellm_provider`` the
``provider``. Price keys of a kept entry that the price file cannot represent (per image, per
second, per character, …) are counted per key in ``unrepresented``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from costflux.core.money import PICO_PER_DOLLAR, MoneyError, to_decimal

__all__ = ["LitellmImport", "convert_litellm", "import_litellm"]

#: Modes priced per token: text, and (with their audio token prices) realtime speech and
#: transcription models that have token prices; per-second ones are skipped as unpriced.
_TOKEN_MODES = frozenset({"chat", "completion", "responses", "realtime", "audio_transcription"})
_INPUT_ONLY_MODES = frozenset({"embedding"})
# LiteLLM key -> price-file key, for the base prices and (with a suffix) for each tier.
_PRICE_KEYS = {
    "input_cost_per_token": "input_tokens",
    "output_cost_per_token": "output_tokens",
    "cache_read_input_token_cost": "cached_input_tokens",
    "cache_creation_input_token_cost": "cache_write_input_tokens",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h_input_tokens",
    "input_cost_per_audio_token": "audio_input_tokens",
    "output_cost_per_audio_token": "audio_output_tokens",
    "input_cost_per_image_token": "image_input_tokens",
    "output_cost_per_reasoning_token": "reasoning_tokens",
}
_TIER_KEY = re.compile(
    r"^(" + "|".join(_PRICE_KEYS) + r")_above_(\d+)(k?)_tokens$"
)
#: LiteLLM suffix of a mode's prices -> where the price file keeps them.
_MODES = {"_batches": ("batch",), "_priority": ("service_tiers", "priority"),
          "_flex": ("service_tiers", "flex")}
_SEARCH_SIZE = "search_context_size_medium"
# The price file holds whole pico-dollars per token (money.exact_pico).
_PICO = Decimal(1) / PICO_PER_DOLLAR


@dataclass
class LitellmImport:
    """The price document, and what did not make it in (reason -> count)."""

    document: dict[str, Any]
    skipped: Counter[str] = field(default_factory=Counter)
    rounded: int = 0  # prices finer than 1e-12 $/token, rounded half-even to it
    #: Price keys of imported entries the price file has no place for -> entries with one.
    unrepresented: Counter[str] = field(default_factory=Counter)


class _Skip(Exception):
    """An entry that is not imported; the message is the reason counted."""


def convert_litellm(
    catalogue: Mapping[str, Any],
    effective_from: datetime | None = None,
    providers: Collection[str] | None = None,
) -> dict[str, Any]:
    """The price document for ``catalogue``; see ``import_litellm`` for what was skipped."""
    return import_litellm(catalogue, effective_from, providers).document


def import_litellm(
    catalogue: Mapping[str, Any],
    effective_from: datetime | None = None,
    providers: Collection[str] | None = None,
) -> LitellmImport:
    """Convert every usable entry, sorted by name so re-imports diff cleanly.

    With ``effective_from`` each model's prices are a single dated change, so the model is
    unpriced before then and the entry can be appended to an existing file's ``changes``.
    ``providers`` keeps only entries whose ``litellm_provider`` is listed.
    """
    result = LitellmImport(document={})
    models: dict[str, Any] = {}
    for name in sorted(catalogue):
        try:
            prices, rounded = _model_prices(name, catalogue[name], providers)
        except _Skip as skip:
            result.skipped[str(skip)] += 1
            continue
        result.rounded += rounded
        result.unrepresented.update(_unrepresented(catalogue[name]))
        if effective_from is not None:
            prices = {"changes": [{"effective_from": _rfc3339(effective_from), **prices}]}
        models[name] = prices
    result.document["model_costs"] = models
    return result


def _model_prices(
    name: str, entry: Any, providers: Collection[str] | None
) -> tuple[dict[str, Any], int]:
    """(price-file entry, how many prices were rounded) or ``_Skip`` with the reason."""
    if name == "sample_spec":
        raise _Skip("sample_spec: the catalogue's schema documentation")
    if not isinstance(entry, dict):
        raise _Skip("not a model entry (not a JSON object)")
    mode = entry.get("mode")
    if mode is None:
        raise _Skip("no mode (not a model, e.g. fallback rules or a price bucket)")
    if providers is not None and entry.get("litellm_provider") not in providers:
        raise _Skip("provider not selected")
    if mode not in _TOKEN_MODES | _INPUT_ONLY_MODES:
        raise _Skip(f"mode {mode}: not priced per text token")
    if entry.get("input_cost_per_token") is None:
        if entry.get("tiered_pricing"):  # e.g. dashscope: price ranges, not above-N keys
            raise _Skip(f"mode {mode}: only a tiered_pricing range table (not imported)")
        raise _Skip(f"mode {mode}: no input_cost_per_token")
    if entry.get("output_cost_per_token") is None:
        if mode not in _INPUT_ONLY_MODES:
            raise _Skip(f"mode {mode}: no output_cost_per_token")
        entry = {**entry, "output_cost_per_token": 0}
    prices, rounded = _prices(entry, "")
    tiers = []
    for above, suffix in _tier_suffixes(entry):
        tier, tier_rounded = _prices(entry, suffix)
        tiers.append({"above_tokens": above, **tier})
        rounded += tier_rounded
    if tiers:
        prices["tiers"] = tiers
    for suffix, where in _MODES.items():
        mode_prices, mode_rounded = _prices(entry, suffix)
        if mode_prices:
            rounded += mode_rounded
            target = prices
            for step in where[:-1]:
                target = target.setdefault(step, {})
            target[where[-1]] = mode_prices
    search = entry.get("search_context_cost_per_query")
    if isinstance(search, dict) and search.get(_SEARCH_SIZE) is not None:
        try:
            prices["per_web_search_call"] = to_decimal(search[_SEARCH_SIZE]).normalize()
        except MoneyError as exc:
            raise _Skip("search_context_cost_per_query is not a number") from exc
    provider = entry.get("litellm_provider")
    if isinstance(provider, str) and provider:
        prices["provider"] = provider
    return prices, rounded


def _used(key: str) -> bool:
    """Whether the import reads ``key`` (a price, a tier's, a mode's or the search price)."""
    if key in _PRICE_KEYS or _TIER_KEY.match(key) or key == "search_context_cost_per_query":
        return True
    return any(key.endswith(suffix) and key[:-len(suffix)] in _PRICE_KEYS for suffix in _MODES)


def _unrepresented(entry: Mapping[str, Any]) -> list[str]:
    return [key for key, value in entry.items()
            if "cost" in key and value is not None and not _used(key)]


def _tier_suffixes(entry: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(above_tokens, key suffix) of each tier, ascending; as LiteLLM, keyed by the input key."""
    tiers = {}
    for key, value in entry.items():
        match = _TIER_KEY.match(key)
        if match and match[1] == "input_cost_per_token" and value is not None:
            tiers[int(match[2]) * (1000 if match[3] else 1)] = key[len(match[1]):]
    return sorted(tiers.items())


def _prices(entry: Mapping[str, Any], suffix: str) -> tuple[dict[str, Any], int]:
    """(price-file keys of the LiteLLM keys ending in ``suffix`` that are set, how many rounded)."""
    prices: dict[str, Any] = {}
    rounded = 0
    for litellm_key, key in _PRICE_KEYS.items():
        value = entry.get(litellm_key + suffix)
        if value is not None:
            prices[key], was_rounded = _per_1k(value, litellm_key + suffix)
            rounded += was_rounded
    return prices, rounded


def _per_1k(per_token: Any, key: str) -> tuple[Decimal, bool]:
    """$/token as written -> ($/1K exact, whether it had to be rounded to 1e-12 $/token)."""
    try:
        dollars = to_decimal(per_token)
    except MoneyError as exc:
        raise _Skip(f"{key} is not a number") from exc
    if dollars < 0:
        raise _Skip(f"{key} is negative")
    # Float noise such as 2.9999900000000002e-06 is finer than a pico-dollar, which the
    # price file refuses; the rounding changes a price by under 1e-12 $/token.
    exact = dollars.quantize(_PICO, rounding=ROUND_HALF_EVEN)
    return (exact * 1000).normalize(), exact != dollars


def _rfc3339(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # as the price file reads an offset-less time
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
