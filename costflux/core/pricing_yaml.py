"""A price document (as ``litellm_import`` builds it) written as price-file YAML."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import yaml

__all__ = ["dump_pricing_yaml"]


class _PriceDumper(yaml.SafeDumper):
    """SafeDumper that writes Decimal prices as plain YAML numbers."""


def _represent_decimal(dumper: yaml.SafeDumper, value: Decimal) -> yaml.ScalarNode:
    # Fixed-point, never 2.5E-6: PyYAML reads an exponent without a dot as a string. The
    # parser reads the float back through its shortest repr, which gives these digits again.
    text = format(value, "f")
    tag = "tag:yaml.org,2002:float" if "." in text else "tag:yaml.org,2002:int"
    return dumper.represent_scalar(tag, text)


_PriceDumper.add_representer(Decimal, _represent_decimal)


def dump_pricing_yaml(document: Mapping[str, Any], header: Iterable[str] = ()) -> str:
    """YAML text of ``document``, each ``header`` line as a leading comment."""
    comments = "".join(f"# {line}\n" for line in header)
    # Flow style for the innermost mappings: one line per model (or tier), like the seed file.
    body = yaml.dump(
        dict(document), Dumper=_PriceDumper, sort_keys=False, default_flow_style=None,
        allow_unicode=True, width=100,
    )
    return comments + body
