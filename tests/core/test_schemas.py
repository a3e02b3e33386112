"""The checked-in JSON Schema files are the contract: no drift, and they validate real events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from costflux.schemas.generate import CONTRACTS, SCHEMA_DIR, render
from costflux.schemas.usage import UsageEvent

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "json"
EXAMPLE: dict[str, Any] = {
    "event_id": "req-1",
    "ts": "2024-05-01T12:00:00Z",
    "model": "gpt-4",
    "input_tokens": 100,
    "output_tokens": 20,
    "cached_input_tokens": 40,
    "latency_ms": 812.5,
    "status": "ok",
    "deployment": "chat-prod",
    "labels": {"team": "search", "namespace": "prod"},
}


def usage_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        (REPO_SCHEMAS / "usage_event.v1.json").read_text(encoding="utf-8")
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def test_every_contract_has_a_checked_in_file_and_no_file_is_orphaned() -> None:
    # The configuration files' schemas beside them: tests/test_config_schemas.py.
    assert SCHEMA_DIR.resolve() == REPO_SCHEMAS
    contracts = {p.name for p in REPO_SCHEMAS.glob("*.json") if "_file." not in p.name}
    assert contracts == set(CONTRACTS)


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_checked_in_schema_equals_the_generated_one(name: str) -> None:
    path = REPO_SCHEMAS / name
    assert path.is_file(), f"{path} is missing; run `costflux schemas` and commit the result"
    checked_in = path.read_text(encoding="utf-8")
    assert checked_in == render(CONTRACTS[name]), (
        f"{path} differs from the {CONTRACTS[name].__name__} model; "
        "run `costflux schemas` and commit the result"
    )


def test_valid_example_passes_both_the_schema_and_the_model() -> None:
    jsonschema.validate(EXAMPLE, usage_schema(), cls=jsonschema.Draft202012Validator)
    jsonschema.validate({**EXAMPLE, "ts": 1714564800}, usage_schema())
    assert UsageEvent.model_validate(EXAMPLE).ts_ms == 1_714_564_800_000


@pytest.mark.parametrize(
    "change",
    [
        {"input_token": 100},  # the typo that would under-bill
        {"input_tokens": "100"},
        {"input_tokens": -1},
        {"output_tokens": 10_000_001},
        {"status": "maybe"},
        {"labels": {"team": "x" * 257}},
        {"labels": {f"k{i}": "v" for i in range(33)}},
        {"event_id": ""},
    ],
    ids=lambda change: next(iter(change)) + "=" + str(next(iter(change.values())))[:12],
)
def test_invalid_events_fail_the_schema_as_they_fail_the_model(change: dict[str, Any]) -> None:
    bad = {**EXAMPLE, **change}
    validator = jsonschema.Draft202012Validator(usage_schema())
    assert list(validator.iter_errors(bad)), f"the schema accepted {change}"
    with pytest.raises(ValueError):  # pydantic.ValidationError is a ValueError
        UsageEvent.model_validate(bad)


def test_missing_required_field_fails_the_schema() -> None:
    schema = usage_schema()
    assert set(schema["required"]) == {"event_id", "ts", "model", "input_tokens", "output_tokens"}
    for field in schema["required"]:
        bad = {k: v for k, v in EXAMPLE.items() if k != field}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
