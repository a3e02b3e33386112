"""LiteLLM catalogue import, long-context tiers and ``costflux pricing`` (no broker)."""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from costflux.cli import main
from costflux.core.litellm_import import convert_litellm, import_litellm
from costflux.core.pricing import ModelPrice, ModelTier, PartRates, PricingError
from costflux.core.pricing_file import parse_pricing_text
from costflux.core.pricing_yaml import dump_pricing_yaml
from tests.paths import REPO

CATALOGUE = REPO / "tests/fixtures/litellm_prices/model_prices_and_context_window.json"
D = Decimal


@pytest.fixture(scope="module")
def catalogue() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(CATALOGUE.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def models(catalogue: dict[str, Any]) -> dict[str, Any]:
    costs: dict[str, Any] = convert_litellm(catalogue)["model_costs"]
    return costs


# Written by hand from the JSON ($/token x 1000), not computed by the code under test.
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", {"input_tokens": D("0.0025"), "output_tokens": D("0.01"),
                    "cached_input_tokens": D("0.00125"), "provider": "openai",
                    "batch": {"input_tokens": D("0.00125"), "output_tokens": D("0.005")},
                    "service_tiers": {"priority": {
                        "input_tokens": D("0.00425"), "output_tokens": D("0.017"),
                        "cached_input_tokens": D("0.002125")}}}),
        ("gpt-4.1-mini", {"input_tokens": D("0.0004"), "output_tokens": D("0.0016"),
                          "cached_input_tokens": D("0.0001"), "provider": "openai",
                          "batch": {"input_tokens": D("0.0002"), "output_tokens": D("0.0008")},
                          "service_tiers": {"priority": {
                              "input_tokens": D("0.0007"), "output_tokens": D("0.0028"),
                              "cached_input_tokens": D("0.000175")}}}),
        ("claude-sonnet-4-20250514", {
            "input_tokens": D("0.003"), "output_tokens": D("0.015"),
            "cached_input_tokens": D("0.0003"), "cache_write_input_tokens": D("0.00375"),
            "cache_write_1h_input_tokens": D("0.006"), "per_web_search_call": D("0.01"),
            "provider": "anthropic",
            "tiers": [{"above_tokens": 200000, "input_tokens": D("0.006"),
                       "output_tokens": D("0.0225"), "cached_input_tokens": D("0.0006"),
                       "cache_write_input_tokens": D("0.0075")}],
        }),
        ("xai/grok-4-0709", {  # no cache-read price: left out, so cached = input price
            "input_tokens": D("0.003"), "output_tokens": D("0.015"), "provider": "xai",
            "tiers": [{"above_tokens": 128000, "input_tokens": D("0.006"),
                       "output_tokens": D("0.03")}],
        }),
        ("text-embedding-3-small", {"input_tokens": D("0.00002"), "output_tokens": D("0"),
                                    "provider": "openai",
                                    "batch": {"input_tokens": D("0.00001"),
                                              "output_tokens": D("0")}}),
        # 2.9999900000000002e-06 $/token is float noise finer than 1e-12 $: rounded to it.
        ("databricks/databricks-claude-3-7-sonnet", {
            "input_tokens": D("0.00299999"), "output_tokens": D("0.01500002"),
            "provider": "databricks",
        }),
    ],
)
def test_spot_checked_prices(models: dict[str, Any], model: str, expected: dict[str, Any]) -> None:
    assert models[model] == expected


def test_skips_are_counted_per_reason(catalogue: dict[str, Any]) -> None:
    result = import_litellm(catalogue)
    assert result.skipped["sample_spec: the catalogue's schema documentation"] == 1
    assert result.skipped["not a model entry (not a JSON object)"] == 1  # last_updated
    assert result.skipped["mode image_generation: not priced per text token"] > 0
    assert result.skipped["mode chat: only a tiered_pricing range table (not imported)"] == 1
    assert "dashscope/qwen-flash" not in result.document["model_costs"]
    assert len(result.document["model_costs"]) + result.skipped.total() == len(catalogue)
    assert result.rounded == 2


def test_provider_filter_and_effective_from(catalogue: dict[str, Any]) -> None:
    start = datetime(2025, 7, 1, tzinfo=UTC)
    document = convert_litellm(catalogue, start, providers={"anthropic"})
    entry = document["model_costs"]["claude-sonnet-4-20250514"]
    assert entry["changes"][0]["effective_from"] == "2025-07-01T00:00:00Z"
    assert {"gpt-4o", "xai/grok-4-0709"}.isdisjoint(document["model_costs"])
    book = parse_pricing_text(dump_pricing_yaml(document))
    start_ms = int(start.timestamp() * 1000)
    assert book.model_price("claude-sonnet-4-20250514", start_ms - 1) is None  # not yet priced
    assert book.model_price("claude-sonnet-4-20250514", start_ms) is not None


def test_imported_document_round_trips(models: dict[str, Any]) -> None:
    book = parse_pricing_text(dump_pricing_yaml({"model_costs": models}), "imported.yaml")
    assert book.models == frozenset(models)  # names with '/', '.', ':' and '@' survive YAML
    for name, spec in models.items():
        price = book.model_price(name, 0)
        assert price is not None
        assert price.input == _pico(spec["input_tokens"]), name
        assert price.output == _pico(spec["output_tokens"]), name
        cached = spec.get("cached_input_tokens", spec["input_tokens"])
        assert price.cached_input == _pico(cached), name
        assert [t.above_tokens for t in price.tiers] == [
            t["above_tokens"] for t in spec.get("tiers", [])
        ]


def _pico(per_1k: Decimal) -> int:
    value = per_1k / 1000 * 10**12
    assert value == value.to_integral_value()
    return int(value)


# --- long-context tiers -------------------------------------------------------------------

# claude-sonnet-4-20250514 in pico-dollars per token: base 3e-6 / 15e-6 / cache 0.3e-6 $,
# above 200k prompt tokens 6e-6 / 22.5e-6 / cache 0.6e-6 $.
# Cache writes: 3.75e-6 $ (5 minutes), 6e-6 $ (1 hour), 7.5e-6 $ above 200k; a web search 0.01 $.
SONNET = ModelPrice(
    3_000_000, 15_000_000, 300_000,
    (ModelTier(200_000, 6_000_000, 22_500_000, 600_000, PartRates(
        cache_write=7_500_000, cache_write_1h=6_000_000, audio_input=6_000_000,
        image_input=6_000_000, reasoning=22_500_000, audio_output=22_500_000)),),
    explicit_parts=(("cache_write", 3_750_000), ("cache_write_1h", 6_000_000)),
    web_search_call=10_000_000_000, provider="anthropic")


def test_imported_tier_is_parsed(models: dict[str, Any]) -> None:
    book = parse_pricing_text(dump_pricing_yaml({"model_costs": models}))
    assert book.model_price("claude-sonnet-4-20250514", 0) == SONNET


def test_request_at_the_boundary_is_priced_at_the_base_rate() -> None:
    # 150,000 uncached x 3e6 + 50,000 cached x 3e5 + 1,000 output x 1.5e7 pico-dollars
    assert SONNET.cost(200_000, 1_000, 50_000) == 480_000_000_000


def test_request_above_the_boundary_is_priced_entirely_at_the_tier() -> None:
    # 150,001 uncached x 6e6 + 50,000 cached x 6e5 + 1,000 output x 2.25e7 pico-dollars
    assert SONNET.cost(200_001, 1_000, 50_000) == 952_506_000_000


def test_the_largest_tier_below_the_prompt_applies_and_gaps_inherit() -> None:
    book = parse_pricing_text(textwrap.dedent("""\
        model_costs:
          m:
            input_tokens: 0.001
            output_tokens: 0.002
            tiers:
              - {above_tokens: 128000, input_tokens: 0.002}
              - {above_tokens: 200000, input_per_1m: 4, output_tokens: 0.008}
    """))
    price = book.model_price("m", 0)
    assert price is not None
    assert price.tiers == (ModelTier(128_000, 2_000_000, 2_000_000, 1_000_000),
                           ModelTier(200_000, 4_000_000, 8_000_000, 1_000_000))
    assert price.cost(128_000, 1, 0) == 128_000 * 1_000_000 + 2_000_000
    assert price.cost(150_000, 1, 0) == 150_000 * 2_000_000 + 2_000_000
    assert price.cost(300_000, 1, 0) == 300_000 * 4_000_000 + 8_000_000
    assert hash(price) == hash(ModelPrice(1_000_000, 2_000_000, 1_000_000, price.tiers))


def test_a_change_keeps_earlier_tiers_unless_it_gives_its_own() -> None:
    book = parse_pricing_text(textwrap.dedent("""\
        model_costs:
          m:
            input_tokens: 0.001
            output_tokens: 0.002
            tiers: [{above_tokens: 1000, input_tokens: 0.003}]
            changes:
              - {effective_from: 2025-01-01T00:00:00Z, output_tokens: 0.004}
              - {effective_from: 2025-02-01T00:00:00Z, tiers: []}
    """))
    jan, feb = 1_735_689_600_000, 1_738_368_000_000  # 2025-01-01 and 2025-02-01 UTC
    january, february = book.model_price("m", jan), book.model_price("m", feb)
    assert january is not None and february is not None
    assert [(t.above_tokens, t.input) for t in january.tiers] == [(1000, 3_000_000)]
    assert (january.output, february.tiers) == (4_000_000, ())


@pytest.mark.parametrize(
    ("tiers", "line", "field", "message"),
    [
        ("[{above_tokens: yes}]", 5, "model_costs.m.tiers.0", "positive whole number"),
        ("[{above_tokens: 10}, {above_tokens: 10}]", 5, "model_costs.m.tiers.1.above_tokens",
         "ascending"),
        ("[{above_tokens: 10, input: 1}]", 5, "model_costs.m.tiers.0.input", "unknown price key"),
        ("{above_tokens: 10}", 5, "model_costs.m.tiers", "expected a list"),
    ],
)
def test_tier_errors_name_field_and_line(tiers: str, line: int, field: str, message: str) -> None:
    text = "model_costs:\n  m:\n    input_tokens: 0.001\n    output_tokens: 0.002\n"
    text += f"    tiers: {tiers}\n"
    with pytest.raises(PricingError, match=rf"^p\.yaml:{line}: {field}: .*{message}"):
        parse_pricing_text(text, "p.yaml")


# --- CLI ------------------------------------------------------------------------------------

BROKEN = """\
model_costs:
  gpt-4o:
    input_tokens: 0.0025
    output_tokens: 0.01
    tiers:
      - above_tokens: 128000
        input_tokens: lots
"""


def test_check_rejects_a_broken_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(BROKEN, encoding="utf-8")
    assert main(["pricing", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:7: model_costs.gpt-4o.tiers.0.input_tokens:" in err


def test_cli_import_writes_a_file_check_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "litellm.yaml"
    argv = ["pricing", "import-litellm", str(CATALOGUE), "-o", str(out),
            "--provider", "openai,anthropic", "--effective-from", "2025-07-01T00:00:00Z"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "provider not selected" in err
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Imported from LiteLLM's price catalogue")
    assert "Effective from: 2025-07-01T00:00:00+00:00" in text
    assert main(["pricing", "check", str(out)]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith(f"{out}: ok: ") and summary.endswith(" models, 0 GPU types")


def test_cli_import_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pricing", "import-litellm", str(CATALOGUE), "--provider", "xai"]) == 0
    book = parse_pricing_text(capsys.readouterr().out)
    price = book.model_price("xai/grok-4-0709", 0)
    assert price is not None and price.tiers[0].above_tokens == 128_000


def test_what_the_price_file_cannot_represent_is_counted_per_key(
    catalogue: dict[str, Any],
) -> None:
    result = import_litellm(catalogue)
    # Counted by hand in the fixture: per-image and per-second prices of imported models.
    assert result.unrepresented["input_cost_per_image"] == 3
    assert result.unrepresented["input_cost_per_audio_per_second"] == 2
    # What the price file now holds is not among them.
    assert not {"cache_creation_input_token_cost", "input_cost_per_token_batches",
                "input_cost_per_token_priority", "input_cost_per_audio_token",
                "output_cost_per_reasoning_token"} & set(result.unrepresented)


def test_an_imported_realtime_model_bills_audio_at_its_audio_rates(
    models: dict[str, Any],
) -> None:
    realtime = [name for name, spec in models.items() if "audio_output_tokens" in spec]
    assert realtime
    book = parse_pricing_text(dump_pricing_yaml({"model_costs": models}))
    price = book.model_price(realtime[0], 0)
    assert price is not None
    assert price.parts.audio_output == _pico(models[realtime[0]]["audio_output_tokens"])
