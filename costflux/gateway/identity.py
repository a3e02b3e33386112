"""Whose a gateway request is: the client's key, its entry in the keys file, the labels. Pure.

A client's API key is known only by its id, ``key-`` and the first 16 hex digits of the key's
SHA-256 (:func:`key_id`): stable, so budgets and the keys file can name it, and not
reversible, so neither they nor any usage event, log or metric holds the key.

The keys file (``COSTFLUX_KEYS_FILE``) gives a key an alias and the labels its spend carries,
which win over the labels a client sends (a client must not move its spend to another team
by sending a header)::

    keys:
      - id: key-3f9a1c0b7e2d4f68     # costflux gateway key-id prints it
        alias: search-prod
        team: search
        project: rag
        labels: {app: web}
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import yaml

from schemas._types import MAX_LABEL_KEY_LENGTH, MAX_LABEL_VALUE_LENGTH, MAX_LABELS

__all__ = [
    "KEY_ID_PREFIX",
    "IDENTITY_LABELS",
    "KeyEntry",
    "KeysFileError",
    "api_key_of",
    "key_id",
    "parse_keys_text",
    "request_labels",
]

KEY_ID_PREFIX: Final = "key-"
#: Labels only the gateway sets: a client's or the keys file's are not taken.
IDENTITY_LABELS: Final = ("api_key", "api_key_alias", "end_user")
_KEY_ID: Final = re.compile(r"key-[0-9a-f]{16}")
_KEY_ID_HEX_DIGITS: Final = 16
#: Values that may be credentials: OpenAI- and Anthropic-style keys, Authorization values.
_SECRET_PREFIXES: Final = ("sk-", "bearer ")
_FIELDS: Final = ("id", "alias", "team", "project", "labels")
#: The keys file's labels leave room for the identity labels within the contract's limit.
_MAX_KEY_LABELS: Final = MAX_LABELS - len(IDENTITY_LABELS)
_DERIVE: Final = "run `costflux gateway key-id` with the key and write the id it prints"


class KeysFileError(ValueError):
    """A keys file that cannot be used; the message names the line and field to fix."""


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """What the keys file says of one key: its alias and the labels its spend carries (the
    file's ``team`` and ``project`` among them)."""

    alias: str | None
    labels: dict[str, str]


def api_key_of(headers: Mapping[str, str]) -> str | None:
    """The client's credential: ``Authorization: Bearer <key>`` (OpenAI), else ``x-api-key``
    (Anthropic), else ``api-key`` (Azure OpenAI); header names in any case.

    >>> api_key_of({"X-Api-Key": "sk-ant-api03-abc", "anthropic-version": "2023-06-01"})
    'sk-ant-api03-abc'
    >>> api_key_of({"Authorization": "Basic dXNlcjpwdw=="}) is None
    True
    """
    found: dict[str, str] = {}
    for name, value in headers.items():
        found.setdefault(name.lower(), value)
    scheme, _, credentials = found.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    for name in ("x-api-key", "api-key"):
        value = found.get(name, "").strip()
        if value:
            return value
    return None


def key_id(api_key: str) -> str:
    """The id of a key: ``key-`` and the first 16 hex digits of its SHA-256.

    >>> key_id("sk-proj-example")
    'key-7eca0b7a12c2cd5b'
    """
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    return KEY_ID_PREFIX + digest[:_KEY_ID_HEX_DIGITS]


def request_labels(key: KeyEntry | None, key_id: str | None, end_user: str,
                   client_labels: Mapping[str, str], defaults: Mapping[str, str]
                   ) -> dict[str, str]:
    """The labels of a request's usage event.

    In order, later ones winning: the configured ``defaults``; the client's labels (its
    ``X-Costflux-<Label>`` headers); the key's labels from the keys file; then ``api_key``
    (the key id), ``api_key_alias`` and ``end_user``, which only the gateway sets. A client's
    label that is empty, too long a name, looks like a credential, or would take the event
    past the contract's 32 labels is left out, and its values are cut to 256 characters: an
    event the contract rejects would not be counted at all.

    >>> key = KeyEntry(alias="search-prod", labels={"team": "search"})
    >>> request_labels(key, "key-3f9a1c0b7e2d4f68", "", {"team": "ads", "app": "web"},
    ...                {"namespace": "ml"})  # doctest: +NORMALIZE_WHITESPACE
    {'namespace': 'ml', 'app': 'web', 'team': 'search', 'api_key': 'key-3f9a1c0b7e2d4f68',
     'api_key_alias': 'search-prod'}
    """
    owned = dict(key.labels) if key is not None else {}
    identity: dict[str, str] = {}
    if key_id:
        identity["api_key"] = key_id
    if key is not None and key.alias:
        identity["api_key_alias"] = key.alias
    if end_user:
        identity["end_user"] = end_user[:MAX_LABEL_VALUE_LENGTH]
    labels = dict(defaults)
    room = MAX_LABELS - len(labels.keys() | owned.keys() | identity.keys())
    for name, value in client_labels.items():
        if name in IDENTITY_LABELS or name in owned or not _usable_client_label(name, value):
            continue
        if name not in labels:
            if room <= 0:
                continue
            room -= 1
        labels[name] = value[:MAX_LABEL_VALUE_LENGTH]
    labels.update(owned)
    labels.update(identity)
    return labels


def parse_keys_text(text: str, source: str = "keys.yaml") -> dict[str, KeyEntry]:
    """The keys file's entries by key id, checked: ``keys: [{id, alias, team, project,
    labels}]``, every field but ``id`` optional.

    A mistake raises :class:`KeysFileError` as ``file:line: keys[i].field: what to fix``. An
    ``id`` that is not a key id (``key-`` and 16 hex digits) is refused without being repeated,
    since it may be the key itself.
    """
    root, document = _compose(text, source)
    if (not isinstance(root, yaml.MappingNode) or not isinstance(document, dict)
            or not isinstance(document.get("keys"), list)):
        raise KeysFileError(f"{source}:{_line(root)}: expected a top-level 'keys:' list, e.g. "
                            "keys: [{id: key-..., alias: search-prod, team: search}]")
    for name_node, _ in root.value:
        if name_node.value != "keys":
            raise KeysFileError(f"{source}:{_line(name_node)}: {_shown(name_node.value)}: "
                                "unknown top-level key; the file holds only 'keys:'")
    entry_nodes = next(value for name, value in root.value if name.value == "keys").value
    entries: dict[str, KeyEntry] = {}
    lines: dict[str, tuple[int, int]] = {}
    for index, (entry, node) in enumerate(zip(document["keys"], entry_nodes, strict=True)):
        where = _Where(source, index, node)
        id_, parsed = _entry(entry, where)
        if id_ in entries:
            first, first_line = lines[id_]
            raise KeysFileError(where.at("id", f"the same key as keys[{first}] (line "
                                               f"{first_line}); list each key once"))
        entries[id_] = parsed
        lines[id_] = index, where.line
    return entries


class _Where:
    """Where an entry is, to name in an error: its file, index and lines."""

    def __init__(self, source: str, index: int, node: yaml.Node) -> None:
        self.source, self.index, self.line = source, index, _line(node)
        self._lines: dict[str, int] = {}
        if isinstance(node, yaml.MappingNode):
            for name, _ in node.value:
                if isinstance(name.value, str) and name.value in self._lines:
                    raise KeysFileError(f"{source}:{_line(name)}: keys[{index}]."
                                        f"{_shown(name.value)}: given twice; keep one")
                self._lines[str(name.value)] = _line(name)

    def at(self, field: str | None, problem: str) -> str:
        line = self._lines.get(field.partition(".")[0], self.line) if field else self.line
        path = f"keys[{self.index}]" + (f".{field}" if field else "")
        return f"{self.source}:{line}: {path}: {problem}"


def _entry(entry: Any, where: _Where) -> tuple[str, KeyEntry]:
    if not isinstance(entry, dict):
        raise KeysFileError(where.at(None, "expected a mapping with id and, optionally, alias, "
                                           "team, project and labels"))
    for field in entry:
        if field not in _FIELDS:
            raise KeysFileError(where.at(_shown(field), "unknown field; use one of "
                                                        + ", ".join(sorted(_FIELDS))))
    id_ = _key_id_field(entry.get("id"), where)
    alias = _text(entry, "alias", where)
    labels = _labels(entry.get("labels"), where)
    for name in ("team", "project"):
        value = _text(entry, name, where)
        if value is not None:
            if name in labels:
                raise KeysFileError(where.at(f"labels.{name}", f"also given as keys["
                                             f"{where.index}].{name}; keep one"))
            labels[name] = value
    if len(labels) > _MAX_KEY_LABELS:
        raise KeysFileError(where.at("labels", f"{len(labels)} labels (team and project "
                                     f"included); at most {_MAX_KEY_LABELS} fit in an event"))
    return id_, KeyEntry(alias, labels)


def _key_id_field(value: object, where: _Where) -> str:
    if value is None:
        raise KeysFileError(where.at("id", f"required: the key's id; {_DERIVE}"))
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        # Never repeat the value: it may be the key itself.
        if isinstance(value, str) and value.strip().lower().startswith(_SECRET_PREFIXES):
            problem = ("this is an API key, not its id; never write a key in this file: "
                       "remove it (and rotate the key if the file was shared), then " + _DERIVE)
        else:
            problem = f"not a key id (key- and 16 lowercase hex digits); {_DERIVE}"
        raise KeysFileError(where.at("id", problem))
    return value


def _text(entry: Mapping[str, Any], field: str, where: _Where) -> str | None:
    value = entry.get(field)
    if value is None:
        return None
    return _label_value(value, where, field)


def _labels(value: object, where: _Where) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise KeysFileError(where.at("labels", "expected a mapping of label to value, e.g. "
                                               "{app: web, cost_center: '4410'}"))
    labels: dict[str, str] = {}
    for name, label in value.items():
        if not isinstance(name, str) or not name or len(name) > MAX_LABEL_KEY_LENGTH:
            raise KeysFileError(where.at("labels", f"{_shown(name)}: a label name is 1 to "
                                                   f"{MAX_LABEL_KEY_LENGTH} characters"))
        if name in IDENTITY_LABELS:
            raise KeysFileError(where.at(f"labels.{name}", "set by the gateway from the "
                                                           "request; remove it"))
        labels[name] = _label_value(label, where, f"labels.{_shown(name)}")
    return labels


def _label_value(value: object, where: _Where, field: str) -> str:
    if not isinstance(value, str):
        raise KeysFileError(where.at(field, "expected text; quote it, e.g. '4410'"))
    if not value.strip():
        raise KeysFileError(where.at(field, "empty; give a value or leave the field out"))
    if value.strip().lower().startswith(_SECRET_PREFIXES):
        raise KeysFileError(where.at(field, "looks like a credential; labels are shown on "
                                            "dashboards and alerts, use a name"))
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise KeysFileError(where.at(field, f"longer than {MAX_LABEL_VALUE_LENGTH} characters"))
    return value


def _usable_client_label(name: object, value: object) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_LABEL_KEY_LENGTH
            and isinstance(value, str) and bool(value)
            and not value.strip().lower().startswith(_SECRET_PREFIXES))


def _compose(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (which has the lines) and its values."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    except yaml.MarkedYAMLError as exc:
        # Only the problem and its place: PyYAML's own message quotes the line, which may
        # hold a key.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise KeysFileError(f"{source}:{line}: not valid YAML: {what}") from None
    except yaml.YAMLError:
        raise KeysFileError(f"{source}:1: not valid YAML") from None
    finally:
        loader.dispose()


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _shown(name: object) -> str:
    """A field name to repeat in an error, unless it may be a credential."""
    text = str(name)
    return "(a value that looks like a credential)" if text.strip().lower().startswith(
        _SECRET_PREFIXES) else text[:MAX_LABEL_KEY_LENGTH]
