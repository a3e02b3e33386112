"""Render the JSON Schema files that producers in other languages validate against."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from costflux.schemas.alert import AlertEvent
from costflux.schemas.deadletter import DeadLetterRecord
from costflux.schemas.gpu import GpuSample
from costflux.schemas.usage import UsageEvent

SCHEMA_DIR = Path(__file__).with_name("json")

#: file name -> model; the file name carries the topic version.
CONTRACTS: dict[str, type[BaseModel]] = {
    "usage_event.v1.json": UsageEvent,
    "gpu_sample.v1.json": GpuSample,
    "alert_event.v1.json": AlertEvent,
    "deadletter_record.v1.json": DeadLetterRecord,
}


def render(model: type[BaseModel]) -> str:
    """Return the JSON Schema text for one contract, stable across runs."""
    schema = model.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(
    models: Mapping[str, type[BaseModel]] = CONTRACTS, directory: Path = SCHEMA_DIR
) -> list[Path]:
    """Write the schema file of each of ``models`` (file name -> model; the wire contracts
    unless told); return the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in models.items():
        path = directory / name
        path.write_text(render(model), encoding="utf-8")
        written.append(path)
    return written
