"""The configuration files' JSON Schemas: generated from the models that read the files, no
drift, and every example in the repository passes both the schema and the loader."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
import yaml

from costflux.cli.config_schemas import CONFIG_FILES
from costflux.core.advice_config import parse_assumptions_text
from costflux.core.alert_rules import parse_rules_text
from costflux.core.budgets import parse_budgets_text
from costflux.core.errors import ConfigError
from costflux.core.pricing_file import parse_pricing_text
from costflux.gateway.identity import parse_keys_text
from costflux.schemas.generate import CONTRACTS, SCHEMA_DIR, render
from tests.paths import REPO

LOADERS: dict[str, Callable[[str, str], object]] = {
    "pricing_file.v1.json": parse_pricing_text,
    "rules_file.v1.json": parse_rules_text,
    "budgets_file.v1.json": parse_budgets_text,
    "advice_file.v1.json": parse_assumptions_text,
    "keys_file.v1.json": parse_keys_text,
}
#: (file, the ConfigMap data key or None, schema) of every configuration file in the repo.
EXAMPLES = [
    ("costflux/data/pricing.yaml", None, "pricing_file.v1.json"),
    ("costflux/data/pricing-other-costs.example.yaml", None, "pricing_file.v1.json"),
    ("costflux/data/demo_budgets.yaml", None, "budgets_file.v1.json"),
    ("deploy/kubernetes/configmap-pricing.yaml", "pricing.yaml", "pricing_file.v1.json"),
    ("deploy/kubernetes/configmap-alerting.yaml", "budgets.yaml", "budgets_file.v1.json"),
    ("deploy/kubernetes/gateway.yaml", "keys.yaml", "keys_file.v1.json"),
]
#: A docs page's YAML block is an example of the file whose top-level key it starts with.
DOCS_SCHEMAS = {"budgets": "budgets_file.v1.json", "rules": "rules_file.v1.json",
                "keys": "keys_file.v1.json", "model_costs": "pricing_file.v1.json",
                "gpu_pricing": "pricing_file.v1.json", "other_costs": "pricing_file.v1.json",
                "target_utilization_pct": "advice_file.v1.json"}


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(loaded)
    return loaded


def as_json(text: str) -> Any:
    """The YAML as an editor's schema validator sees it: timestamps and dates as text."""
    return json.loads(json.dumps(yaml.safe_load(text), default=str))


def errors(document: Any, name: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema(name))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_checked_in_schema_equals_the_generated_one(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.is_file(), f"{path} is missing; run `costflux schemas` and commit the result"
    assert path.read_text(encoding="utf-8") == render(CONFIG_FILES[name]), (
        f"{path} differs from the {CONFIG_FILES[name].__name__} model; run `costflux schemas` "
        "and commit the result")


def test_every_schema_file_is_generated_and_has_a_loader() -> None:
    assert {p.name for p in SCHEMA_DIR.glob("*.json")} == set(CONTRACTS) | set(CONFIG_FILES)
    assert set(LOADERS) == set(CONFIG_FILES)


def _example(file: str, key: str | None) -> str:
    text = (REPO / file).read_text(encoding="utf-8")
    if key is None:
        return text
    maps = [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "ConfigMap"]
    (data,) = [m["data"][key] for m in maps if key in (m.get("data") or {})]
    return str(data)


@pytest.mark.parametrize(("file", "key", "name"), EXAMPLES)
def test_every_example_file_passes_its_schema_and_its_loader(
    file: str, key: str | None, name: str,
) -> None:
    text = _example(file, key)
    assert errors(as_json(text), name) == []
    LOADERS[name](text, file)


def _docs_examples() -> list[Any]:
    found = []
    for page in sorted((REPO / "docs").glob("*.md")):
        blocks = re.findall(r"^```yaml\n(.*?)^```", page.read_text(encoding="utf-8"),
                            re.M | re.S)
        for index, block in enumerate(blocks):
            first = block.lstrip().split(":", 1)[0]
            if first in DOCS_SCHEMAS:
                found.append(pytest.param(block, DOCS_SCHEMAS[first], id=f"{page.stem}-{index}"))
    return found


def test_the_docs_have_examples_of_every_file_but_rules() -> None:
    assert {example.values[1] for example in _docs_examples()} == set(CONFIG_FILES) - {
        "rules_file.v1.json"}


@pytest.mark.parametrize(("block", "name"), _docs_examples())
def test_every_example_in_the_docs_passes_its_schema(block: str, name: str) -> None:
    assert errors(as_json(block), name) == []


BAD = [
    ("pricing_file.v1.json", "model_cost:\n  m: {input_tokens: 1, output_tokens: 1}\n"),
    ("pricing_file.v1.json", "model_costs:\n  m: {input_tokens: -1, output_tokens: 1}\n"),
    ("pricing_file.v1.json", "gpu_pricing:\n  t4: {on_demand: 1, spto: 1}\n"),
    ("pricing_file.v1.json", "model_costs:\n  m: {input_tokens: 1, output_tokens: 1, "
                             "tiers: [{above_tokens: 0}]}\n"),
    ("rules_file.v1.json", "rules: [{name: r, signal: costs, threshold: 1}]\n"),
    ("rules_file.v1.json", "rules: [{name: r, signal: daily_cost, threshold: 1, for: 1.5h}]\n"),
    ("budgets_file.v1.json", "budgets: [{name: b, period: yearly, amount: 1}]\n"),
    ("budgets_file.v1.json", "budgets: [{name: b, period: daily, amount: 1, scope: {node: x}}]\n"),
    ("advice_file.v1.json", "routing_share_pct: 150\n"),
    ("advice_file.v1.json", "speedup: 2\n"),
    ("keys_file.v1.json", "keys: [{id: sk-proj-abcdefabcdefabcdef}]\n"),
    ("keys_file.v1.json", "keys: [{id: key-3f9a1c0b7e2d4f68, labels: {end_user: bob}}]\n"),
]


@pytest.mark.parametrize(("name", "text"), BAD)
def test_known_bad_files_fail_both_the_schema_and_the_loader(name: str, text: str) -> None:
    assert errors(as_json(text), name)
    with pytest.raises(ConfigError):
        LOADERS[name](text, "bad.yaml")


def test_the_schemas_are_where_the_docs_say() -> None:
    page = (REPO / "docs/configuration.md").read_text(encoding="utf-8")
    for name in CONFIG_FILES:
        assert f"schemas/json/{name}" in page
