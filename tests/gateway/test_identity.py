"""The gateway knows a client by its key's id, reads the keys file, and composes the labels."""

from __future__ import annotations

import hashlib
import os
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from costflux.gateway.identity import (
    KeyEntry,
    KeysFileError,
    api_key_of,
    key_id,
    parse_keys_text,
    request_labels,
)
from costflux.schemas.usage import UsageEvent

# --- the credential and its id ----------------------------------------------------------------


@pytest.mark.parametrize(("headers", "expected"), [
    ({"Authorization": "Bearer sk-proj-abc"}, "sk-proj-abc"),
    ({"authorization": "bearer  sk-proj-abc "}, "sk-proj-abc"),
    ({"AUTHORIZATION": "BEARER sk-proj-abc"}, "sk-proj-abc"),
    ({"x-api-key": "sk-ant-api03-abc", "anthropic-version": "2023-06-01"}, "sk-ant-api03-abc"),
    ({"X-Api-Key": "sk-ant-api03-abc"}, "sk-ant-api03-abc"),
    ({"api-key": "0123456789abcdef0123456789abcdef"}, "0123456789abcdef0123456789abcdef"),
    ({"Api-Key": "azure", "X-API-KEY": "anthropic"}, "anthropic"),
    ({"Authorization": "Bearer openai", "x-api-key": "anthropic"}, "openai"),
    ({"Authorization": "Basic dXNlcjpwdw==", "api-key": "azure"}, "azure"),
    ({"Authorization": "Bearer ", "x-api-key": " "}, None),
    ({"Authorization": "Bearer"}, None),
    ({"Content-Type": "application/json"}, None),
    ({}, None),
])
def test_api_key_of(headers: dict[str, str], expected: str | None) -> None:
    assert api_key_of(headers) == expected


def test_key_id_is_the_start_of_the_keys_sha256() -> None:
    # printf 'sk-proj-example' | sha256sum  ->  7eca0b7a12c2cd5b...
    assert key_id("sk-proj-example") == "key-7eca0b7a12c2cd5b"
    # printf '' | sha256sum  ->  e3b0c44298fc1c14...
    assert key_id("") == "key-e3b0c44298fc1c14"


@given(st.text(min_size=1))
def test_key_ids_are_stable_and_never_hold_the_key(api_key: str) -> None:
    first = key_id(api_key)
    assert first == key_id(api_key)
    assert len(first) == 20 and set(first[4:]) <= set(string.hexdigits.lower())
    assert first[4:] == hashlib.sha256(api_key.encode()).hexdigest()[:16]
    if len(api_key) > 3:
        assert api_key not in first


# --- the keys file ----------------------------------------------------------------------------

KEYS_FILE = """\
# Keys of the search team.
keys:
  - id: key-3f9a1c0b7e2d4f68
    alias: search-prod
    team: search
    project: rag
    labels: {app: web, cost_center: "4410"}
  - id: key-0000000000000000
"""


def test_a_keys_file_is_read() -> None:
    assert parse_keys_text(KEYS_FILE, "keys.yaml") == {
        "key-3f9a1c0b7e2d4f68": KeyEntry(alias="search-prod", labels={
            "app": "web", "cost_center": "4410", "team": "search", "project": "rag"}),
        "key-0000000000000000": KeyEntry(alias=None, labels={}),
    }
    assert parse_keys_text("keys: []\n") == {}


def _error(text: str) -> str:
    with pytest.raises(KeysFileError) as raised:
        parse_keys_text(text, "/etc/costflux/keys.yaml")
    return str(raised.value)


@pytest.mark.parametrize(("text", "message"), [
    ("", "/etc/costflux/keys.yaml:1: expected a top-level 'keys:' list, e.g. "
         "keys: [{id: key-..., alias: search-prod, team: search}]"),
    ("keys:\n", "/etc/costflux/keys.yaml:1: expected a top-level 'keys:' list, e.g. "
                "keys: [{id: key-..., alias: search-prod, team: search}]"),
    ("keys: []\ndefaults: {}\n",
     "/etc/costflux/keys.yaml:2: defaults: unknown top-level key; the file holds only 'keys:'"),
    ("keys:\n  - key-3f9a1c0b7e2d4f68\n",
     "/etc/costflux/keys.yaml:2: keys[0]: expected a mapping with id and, optionally, alias, "
     "team, project and labels"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n  - alias: x\n    team: t\n",
     "/etc/costflux/keys.yaml:3: keys[1].id: required: the key's id; run `costflux gateway "
     "key-id` with the key and write the id it prints"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    owner: me\n",
     "/etc/costflux/keys.yaml:3: keys[0].owner: unknown field; use one of alias, id, labels, "
     "project, team"),
    ("keys:\n  - id: key-3F9A1C0B7E2D4F68\n",
     "/etc/costflux/keys.yaml:2: keys[0].id: not a key id (key- and 16 lowercase hex digits); "
     "run `costflux gateway key-id` with the key and write the id it prints"),
    ("keys:\n  - id: 1234\n",
     "/etc/costflux/keys.yaml:2: keys[0].id: not a key id (key- and 16 lowercase hex digits); "
     "run `costflux gateway key-id` with the key and write the id it prints"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    team: 4410\n",
     "/etc/costflux/keys.yaml:3: keys[0].team: expected text; quote it, e.g. '4410'"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    alias: ''\n",
     "/etc/costflux/keys.yaml:3: keys[0].alias: empty; give a value or leave the field out"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    labels: [app, web]\n",
     "/etc/costflux/keys.yaml:3: keys[0].labels: expected a mapping of label to value, e.g. "
     "{app: web, cost_center: '4410'}"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n\n    labels:\n      end_user: bob\n",
     "/etc/costflux/keys.yaml:4: keys[0].labels.end_user: set by the gateway from the "
     "request; remove it"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    team: search\n    labels: {team: ads}\n",
     "/etc/costflux/keys.yaml:4: keys[0].labels.team: also given as keys[0].team; keep one"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    team: a\n    team: b\n",
     "/etc/costflux/keys.yaml:4: keys[0].team: given twice; keep one"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    alias: x\n"
     "  - {alias: y, id: key-3f9a1c0b7e2d4f68}\n",
     "/etc/costflux/keys.yaml:4: keys[1].id: the same key as keys[0] (line 2); list each key "
     "once"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    labels: {" + ", ".join(
        f"l{n}: v" for n in range(30)) + "}\n",
     "/etc/costflux/keys.yaml:3: keys[0].labels: 30 labels (team and project included); at "
     "most 29 fit in an event"),
    ("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    alias: " + "a" * 257 + "\n",
     "/etc/costflux/keys.yaml:3: keys[0].alias: longer than 256 characters"),
])
def test_keys_file_errors_name_the_line_the_field_and_the_fix(text: str, message: str) -> None:
    assert _error(text) == message


def test_invalid_yaml_is_named_by_line_without_quoting_it() -> None:
    message = _error("keys:\n  - id: key-3f9a1c0b7e2d4f68\n    alias: [sk-live-SECRET\n")
    assert message.startswith("/etc/costflux/keys.yaml:4: not valid YAML: ")
    assert "SECRET" not in message
    message = _error("keys:\n  - id: sk-proj-SECRET: x\n")
    assert message.startswith("/etc/costflux/keys.yaml:2: not valid YAML: ")
    assert "SECRET" not in message


_RAW_KEYS = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["sk-", "sk-proj-", "sk-ant-api03-", "SK-", "Bearer ", ""]),
    st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=20, max_size=60),
)


@given(raw=_RAW_KEYS)
def test_a_raw_key_as_id_is_refused_and_never_repeated(raw: str) -> None:
    message = _error(f"keys:\n  - alias: search-prod\n    id: '{raw}'\n")
    assert message.startswith("/etc/costflux/keys.yaml:3: keys[0].id: ")
    assert "costflux gateway key-id" in message
    assert raw not in message and raw[-20:] not in message
    if raw.lower().startswith(("sk-", "bearer ")):
        assert "this is an API key, not its id; never write a key in this file" in message


@given(raw=_RAW_KEYS.filter(lambda raw: raw.lower().startswith(("sk-", "bearer "))))
def test_a_key_anywhere_else_in_the_file_is_never_repeated(raw: str) -> None:
    for text in (f"keys:\n  - id: key-3f9a1c0b7e2d4f68\n    alias: '{raw}'\n",
                 f"keys:\n  - id: key-3f9a1c0b7e2d4f68\n    labels: {{token: '{raw}'}}\n",
                 f"keys:\n  - id: key-3f9a1c0b7e2d4f68\n    '{raw}': x\n",
                 f"keys: []\n'{raw}': x\n"):
        message = _error(text)
        assert raw not in message and raw[-20:] not in message, message


def test_a_key_entry_labels_fit_an_event() -> None:
    labels = {f"l{n}": "v" for n in range(27)}
    text = "keys:\n  - id: key-3f9a1c0b7e2d4f68\n    alias: a\n    team: t\n    labels: {" + (
        ", ".join(f"{k}: {v}" for k, v in labels.items()) + "}\n")
    entry = parse_keys_text(text)["key-3f9a1c0b7e2d4f68"]
    assert len(entry.labels) == 28
    event_labels = request_labels(entry, "key-3f9a1c0b7e2d4f68", "u" * 300,
                                  {f"c{n}": "x" for n in range(10)}, {"namespace": "ml"})
    assert len(event_labels) == 32
    UsageEvent.model_validate({"event_id": "r", "ts": 0, "model": "m", "input_tokens": 1,
                               "output_tokens": 1, "labels": event_labels})


# --- the labels -------------------------------------------------------------------------------

SEARCH = KeyEntry(alias="search-prod", labels={"team": "search", "project": "rag"})


def test_labels_in_order_defaults_client_key_identity() -> None:
    labels = request_labels(SEARCH, "key-3f9a1c0b7e2d4f68", "customer-42",
                            {"app": "web", "namespace": "ml-prod"},
                            {"namespace": "default", "team": "unassigned"})
    assert labels == {"namespace": "ml-prod", "team": "search", "app": "web", "project": "rag",
                      "api_key": "key-3f9a1c0b7e2d4f68", "api_key_alias": "search-prod",
                      "end_user": "customer-42"}


def test_a_client_cannot_move_its_spend_or_its_identity() -> None:
    labels = request_labels(SEARCH, "key-3f9a1c0b7e2d4f68", "",
                            {"team": "ads", "project": "x", "api_key": "key-0000000000000000",
                             "api_key_alias": "someone-else", "end_user": "nobody"}, {})
    assert labels == {"team": "search", "project": "rag", "api_key": "key-3f9a1c0b7e2d4f68",
                      "api_key_alias": "search-prod"}


def test_without_a_key_the_client_labels_stand() -> None:
    assert request_labels(None, None, "", {"team": "ads", "end_user": "x"}, {"team": "d"}) == {
        "team": "ads"}
    assert request_labels(None, "key-0000000000000000", "bob", {}, {}) == {
        "api_key": "key-0000000000000000", "end_user": "bob"}
    assert request_labels(KeyEntry(None, {}), "key-0000000000000000", "", {}, {}) == {
        "api_key": "key-0000000000000000"}


def test_client_labels_that_would_spoil_the_event_are_left_out() -> None:
    client = {"": "x", "k" * 129: "x", "empty": "", "token": "Bearer abc", "key": "sk-abc",
              "long": "v" * 300}
    assert request_labels(None, None, "", client, {}) == {"long": "v" * 256}
    many = {f"c{n:02d}": "x" for n in range(40)}
    labels = request_labels(SEARCH, "key-3f9a1c0b7e2d4f68", "u", many, {"namespace": "ml"})
    assert len(labels) == 32
    assert {"namespace", "team", "project", "api_key", "api_key_alias", "end_user"} <= set(labels)
    assert [name for name in labels if name.startswith("c")] == [f"c{n:02d}" for n in range(26)]


@given(client=st.dictionaries(st.text(max_size=130), st.text(max_size=300), max_size=40),
       defaults=st.dictionaries(st.sampled_from(["namespace", "team", "app", "env"]),
                                st.text(max_size=20)),
       end=st.text(max_size=300))
def test_request_labels_always_make_a_valid_event_with_the_keys_labels(
        client: dict[str, str], defaults: dict[str, str], end: str) -> None:
    labels = request_labels(SEARCH, "key-3f9a1c0b7e2d4f68", end, client, defaults)
    UsageEvent.model_validate({"event_id": "r", "ts": 0, "model": "m", "input_tokens": 1,
                               "output_tokens": 1, "labels": labels})
    assert labels["team"] == "search" and labels["project"] == "rag"
    assert labels["api_key"] == "key-3f9a1c0b7e2d4f68"
    assert labels["api_key_alias"] == "search-prod"
    assert labels.get("end_user") == (end[:256] or None)


def test_the_key_id_command_prints_the_id_of_the_key_on_stdin() -> None:
    secret = "sk-proj-not-a-real-key-but-shaped-like-one"
    printed = subprocess.run([sys.executable, "-m", "costflux", "gateway", "key-id"],
                             input=secret + "\n", capture_output=True, text=True, timeout=60,
                             check=True).stdout.strip()
    assert printed == "key-" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def test_a_bad_keys_file_stops_the_gateway_naming_file_line_and_field(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {id: key-0123456789abcdef, team: search}\n"
                    "  - {id: key-0123456789abcdef, team: ads}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    env.update(COSTFLUX_KAFKA_BOOTSTRAP="127.0.0.1:1", COSTFLUX_REDIS_URL="redis://127.0.0.1:1")
    done = subprocess.run([sys.executable, "-m", "costflux", "gateway", "--upstream",
                           "http://127.0.0.1:1", "--keys-file", str(keys)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{keys}:3: keys[1].id:" in done.stderr, done.stderr
