"""The shape budgets and rules files share: a top-level list of named mappings."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml

__all__ = ["named_entries"]


def named_entries(
    text: str, source: str, key: str, fields: Iterable[str], error: type[ValueError],
    required: str,
) -> list[tuple[str, dict[str, Any]]]:
    """Each entry of ``key: [...]`` with where it is (``source: key[i]``), checked for shape.

    Every entry is a mapping of known ``fields`` with a non-empty, unique ``name``; anything
    else raises ``error`` naming the field and the fix (``required`` lists what to write).
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise error(f"{source}: expected a top-level '{key}:' list")
    known = sorted(fields)
    entries: list[tuple[str, dict[str, Any]]] = []
    names: set[str] = set()
    for index, entry in enumerate(document[key]):
        where = f"{source}: {key}[{index}]"
        if not isinstance(entry, dict):
            raise error(f"{where}: expected a mapping with {required}")
        for field in entry:
            if field not in known:
                raise error(f"{where}.{field}: unknown field; use one of {', '.join(known)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise error(f"{where}.name: required, a non-empty string")
        if name in names:
            raise error(f"{source}: name {name!r} is used twice; names must be unique")
        names.add(name)
        entries.append((where, entry))
    return entries
