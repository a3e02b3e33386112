"""Check Strimzi objects against the kafka.strimzi.io/v1beta2 schemas vendored in tests/fixtures.

Two checks, both from the same npm package (tests/fixtures/strimzi_crds/SOURCE.txt):

- ``schema_errors``: the package's validators, compiled from Strimzi's CRD schemas (types,
  enums, required fields, bounds), run by Node.js on ``validate.mjs``.
- ``unknown_fields``: the validators, like the CRD schemas they come from, accept fields the
  schema does not name, which the API server then rejects (or silently drops); so every key of
  an object is also looked up in the package's TypeScript declaration of the kind, whose
  properties are the schema's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy.manifests import ROOT

CRDS = ROOT / "tests" / "fixtures" / "strimzi_crds"
PACKAGE = CRDS / "node_modules" / "@kubernetes-models" / "strimzi-kafka-operator"
API_VERSION = "kafka.strimzi.io/v1beta2"


def node() -> str | None:
    return shutil.which("node")


def schema_errors(objects: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(kind, name) -> the schema's complaints about that object (empty when valid)."""
    found = node()
    assert found, "Node.js is needed to run the vendored validators"
    result = subprocess.run(  # noqa: S603 - our own script on our own files
        [found, "validate.mjs"],
        input=json.dumps(objects),
        cwd=CRDS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return {(r["kind"], r["name"]): r["errors"] for r in json.loads(result.stdout)}


# --- the TypeScript declarations as a tree of known properties -----------------------------------


@dataclass
class Shape:
    """What a declared type allows: named properties, an index signature, array items."""

    properties: dict[str, Shape] = field(default_factory=dict)
    values: Shape | None = None  # `[key: string]: T`
    items: Shape | None = None  # `Array<T>`
    is_object: bool = False

    def merge(self, other: Shape) -> Shape:
        """The shape of a union or intersection: every field either side names."""
        merged = Shape(
            {**self.properties},
            self.values or other.values,
            self.items or other.items,
            self.is_object or other.is_object,
        )
        for name, shape in other.properties.items():
            mine = merged.properties.get(name)
            merged.properties[name] = mine.merge(shape) if mine else shape
        return merged

    @property
    def free_form(self) -> bool:
        # `{}`: the CRD preserves unknown fields there (e.g. a topic's `config`).
        return self.is_object and not self.properties and self.values is None


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[A-Za-z_$][\w$]*|\d+|[{}()<>\[\]:;?|&,]')


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _TOKEN.findall(re.sub(r"/\*.*?\*/", "", text, flags=re.S))
        self.at = 0

    def peek(self) -> str:
        return self.tokens[self.at]

    def take(self, expected: str | None = None) -> str:
        token = self.tokens[self.at]
        assert expected is None or token == expected, f"expected {expected!r}, got {token!r}"
        self.at += 1
        return token

    def interface(self, name: str) -> Shape:
        self.at = self.tokens.index(name) + 1
        return self.type_()

    def type_(self) -> Shape:
        shape = self.primary()
        while self.peek() in ("|", "&"):  # either side's fields are known in both cases
            self.take()
            shape = shape.merge(self.primary())
        return shape

    def primary(self) -> Shape:
        token = self.take()
        if token == "{":
            return self.members()
        if token == "(":
            shape = self.type_()
            self.take(")")
            return shape
        if token == "Array":
            self.take("<")
            items = self.type_()
            self.take(">")
            return Shape(items=items)
        return Shape()  # a scalar, a literal or a named type (ObjectMeta): no properties known

    def members(self) -> Shape:
        shape = Shape(is_object=True)
        while self.peek() != "}":
            if self.peek() == "[":  # [key: string]: T
                for token in ("[", None, ":", None, "]", ":"):
                    self.take(token)
                shape.values = self.type_()
            else:
                name = self.take().strip('"')
                if self.peek() == "?":
                    self.take()
                self.take(":")
                shape.properties[name] = self.type_()
            self.take(";")
        self.take("}")
        return shape


def declared_shape(kind: str) -> Shape:
    text = (PACKAGE / "kafka.strimzi.io" / "v1beta2" / f"{kind}.d.ts").read_text(encoding="utf-8")
    return _Parser(text).interface(f"I{kind}")


def unknown_fields(value: Any, shape: Shape, path: str = "") -> list[str]:
    """The paths in ``value`` that ``shape`` does not declare."""
    if isinstance(value, dict) and shape.is_object and not shape.free_form:
        unknown = []
        for key, item in value.items():
            inner = shape.properties.get(key, shape.values)
            if inner is None:
                unknown.append(f"{path}/{key}")
            else:
                unknown.extend(unknown_fields(item, inner, f"{path}/{key}"))
        return unknown
    if isinstance(value, list) and shape.items is not None:
        return [
            found
            for index, item in enumerate(value)
            for found in unknown_fields(item, shape.items, f"{path}/{index}")
        ]
    return []


def read_package_version() -> str:
    return str(json.loads((PACKAGE / "package.json").read_text(encoding="utf-8"))["version"])


def strimzi_crd_sources() -> list[Path]:
    """The vendored files that hold the schemas (for the test that they are all there)."""
    kinds = ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser")
    return [
        *(PACKAGE / "_schemas" / f"KafkaStrimziIoV1beta2{kind}.js" for kind in kinds),
        *(PACKAGE / "kafka.strimzi.io" / "v1beta2" / f"{kind}.d.ts" for kind in kinds),
    ]
