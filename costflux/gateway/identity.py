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
from typing import Annotated, Any, ClassVar, Final, Self

from pydantic import BeforeValidator, Field, WithJsonSchema, model_validator

from costflux.core.config_files import ConfigModel, Fix, YamlText, check, refuse
from costflux.core.errors import ConfigError
from costflux.schemas._types import MAX_LABEL_KEY_LENGTH, MAX_LABEL_VALUE_LENGTH, MAX_LABELS

__all__ = [
    "KEY_ID_PREFIX",
    "IDENTITY_LABELS",
    "KeyEntry",
    "KeysFile",
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
#: The keys file's labels leave room for the identity labels within the contract's limit.
_MAX_KEY_LABELS: Final = MAX_LABELS - len(IDENTITY_LABELS)
_DERIVE: Final = "run `costflux gateway key-id` with the key and write the id it prints"


class KeysFileError(ConfigError):
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


def _key_id_problem(value: object) -> str:
    if value is None:
        return f"required: the key's id; {_DERIVE}"
    # Never repeat the value: it may be the key itself.
    if isinstance(value, str) and value.strip().lower().startswith(_SECRET_PREFIXES):
        return ("this is an API key, not its id; never write a key in this file: remove it "
                "(and rotate the key if the file was shared), then " + _DERIVE)
    return f"not a key id (key- and 16 lowercase hex digits); {_DERIVE}"


def _key_id(value: object) -> str:
    if not isinstance(value, str) or not _KEY_ID.fullmatch(value):
        raise refuse(_key_id_problem(value))
    return value


def _label_value(value: object, *at: str) -> str:
    if not isinstance(value, str):
        raise refuse("expected text; quote it, e.g. '4410'", *at)
    if not value.strip():
        raise refuse("empty; give a value or leave the field out", *at)
    if value.strip().lower().startswith(_SECRET_PREFIXES):
        raise refuse("looks like a credential; labels are shown on dashboards and alerts, use "
                     "a name", *at)
    if len(value) > MAX_LABEL_VALUE_LENGTH:
        raise refuse(f"longer than {MAX_LABEL_VALUE_LENGTH} characters", *at)
    return value


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise refuse("expected a mapping of label to value, e.g. {app: web, cost_center: '4410'}")
    for name, label in value.items():
        if not isinstance(name, str) or not name or len(name) > MAX_LABEL_KEY_LENGTH:
            raise refuse(f"{_shown(name)}: a label name is 1 to {MAX_LABEL_KEY_LENGTH} "
                         "characters")
        if name in IDENTITY_LABELS:
            raise refuse("set by the gateway from the request; remove it", name)
        _label_value(label, name)
    return dict(value)


#: An entry's own path in a message, which its model does not know.
_THIS_ENTRY: Final = "keys[<index>]"
_NOT_A_SECRET = {"not": {"pattern": r"^\s*([sS][kK]-|[bB][eE][aA][rR][eE][rR] )"}}
_LabelText = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_VALUE_LENGTH,
                                  json_schema_extra=_NOT_A_SECRET)]
_OptionalText = Annotated[_LabelText | None, BeforeValidator(
    lambda value: None if value is None else _label_value(value))]


class KeyFileEntry(ConfigModel):
    """One key of the keys file: its id, alias, and the labels its spend carries."""

    shape: ClassVar[str] = ("expected a mapping with id and, optionally, alias, team, project "
                            "and labels")

    id: Annotated[str, BeforeValidator(_key_id), Fix(_key_id_problem),
                  WithJsonSchema({"type": "string", "pattern": "^key-[0-9a-f]{16}$",
                                  "description": "`costflux gateway key-id` prints it"})]
    alias: _OptionalText = None
    labels: Annotated[dict[Annotated[str, Field(min_length=1, max_length=MAX_LABEL_KEY_LENGTH)],
                           _LabelText] | None,
                      BeforeValidator(lambda value: None if value is None else _labels(value)),
                      Field(json_schema_extra={"propertyNames": {"not": {
                          "enum": list(IDENTITY_LABELS)}}})] = None
    team: _OptionalText = None
    project: _OptionalText = None

    @model_validator(mode="after")
    def _fit_an_event(self) -> Self:
        labels = self.all_labels()
        for name in ("team", "project"):
            if getattr(self, name) is not None and name in (self.labels or {}):
                raise refuse(f"also given as {_THIS_ENTRY}.{name}; keep one", "labels", name)
        if len(labels) > _MAX_KEY_LABELS:
            raise refuse(f"{len(labels)} labels (team and project included); at most "
                         f"{_MAX_KEY_LABELS} fit in an event", "labels")
        return self

    def all_labels(self) -> dict[str, str]:
        team_project = {n: v for n in ("team", "project") if (v := getattr(self, n)) is not None}
        return {**(self.labels or {}), **team_project}


class KeysFile(ConfigModel):
    """The gateway's keys file (``COSTFLUX_KEYS_FILE``): ``keys: [...]``, nothing else."""

    shape: ClassVar[str] = ("expected a top-level 'keys:' list, e.g. keys: [{id: key-..., "
                            "alias: search-prod, team: search}]")
    unknown: ClassVar[str] = "unknown top-level key; the file holds only 'keys:'"

    keys: list[KeyFileEntry]

    @classmethod
    def _shaped(cls, value: Any) -> bool:
        return isinstance(value, dict) and isinstance(value.get("keys"), list)


def parse_keys_text(text: str, source: str = "keys.yaml") -> dict[str, KeyEntry]:
    """The keys file's entries by key id, checked: ``keys: [{id, alias, team, project,
    labels}]``, every field but ``id`` optional.

    A mistake raises :class:`KeysFileError` as ``file:line: keys[i].field: what to fix``. An
    ``id`` that is not a key id (``key-`` and 16 hex digits) is refused without being repeated,
    since it may be the key itself.
    """
    document = YamlText(text, source, KeysFileError)

    def problem(path: tuple[str | int, ...], message: str, line: int | None = None
                ) -> KeysFileError:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{_shown(p)}" for p in path)[1:]
        if len(path) > 1 and isinstance(path[1], int):
            message = message.replace(_THIS_ENTRY, f"keys[{path[1]}]")
        line = line or document.line(path[:3]) or 1
        return KeysFileError(f"{source}:{line}: {where}: {message}" if where
                             else f"{source}:{line}: {message}")

    repeated = document.repeated_key()
    if repeated is not None:
        raise problem(repeated[0], "given twice; keep one", repeated[1])
    entries: dict[str, KeyEntry] = {}
    first: dict[str, int] = {}
    for index, entry in enumerate(check(KeysFile, document.value, problem).keys):
        if entry.id in first:
            raise problem(("keys", index, "id"), f"the same key as keys[{first[entry.id]}] (line "
                          f"{document.line(('keys', first[entry.id]))}); list each key once")
        first[entry.id] = index
        entries[entry.id] = KeyEntry(entry.alias, entry.all_labels())
    return entries


def _usable_client_label(name: object, value: object) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= MAX_LABEL_KEY_LENGTH
            and isinstance(value, str) and bool(value)
            and not value.strip().lower().startswith(_SECRET_PREFIXES))


def _shown(name: object) -> str:
    """A field name to repeat in an error, unless it may be a credential."""
    text = str(name)
    return "(a value that looks like a credential)" if text.strip().lower().startswith(
        _SECRET_PREFIXES) else text[:MAX_LABEL_KEY_LENGTH]
