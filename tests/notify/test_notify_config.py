"""The notifier's configuration and pure decisions: no broker, no Redis."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

import costflux.agents.notify_redis
from costflux.agents.notify import NotifyOptions, decode_alert
from costflux.cli import main
from costflux.schemas.deadletter import DeadLetterReason
from costflux.settings import ConfigError, Settings
from tests.notify.receiver import SECRET, make_alert

URL = f"https://hooks.slack.com/services/T0/B0/{SECRET}"


def test_without_a_webhook_notify_exits_2_naming_both_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("COSTFLUX_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert main(["notify"]) == 2
    error = capsys.readouterr().err
    assert "COSTFLUX_SLACK_WEBHOOK_URL," in error and "COSTFLUX_SLACK_WEBHOOK_URL_FILE" in error


def test_the_url_comes_from_the_setting_or_the_stripped_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "url"
    secret.write_text(f"  {URL}\n")
    assert Settings(slack_webhook_url_file=secret).slack_webhook() == URL
    assert Settings(slack_webhook_url=URL, slack_webhook_url_file=secret).slack_webhook() == URL
    assert SECRET not in repr(NotifyOptions("t", "d", "ns", URL))


@pytest.mark.parametrize("written", [f"ftp://x/{SECRET}", "", None])
def test_a_bad_or_unreadable_secret_is_a_config_error_that_does_not_show_it(
    tmp_path: Path, written: str | None,
) -> None:
    secret = tmp_path / "url"
    if written is not None:
        secret.write_text(written)
    with pytest.raises(ConfigError, match="COSTFLUX_SLACK_WEBHOOK_URL_FILE") as raised:
        Settings(slack_webhook_url_file=secret).slack_webhook()
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(("value", "reason"), [
    (b"{oops", DeadLetterReason.BAD_JSON),
    (None, DeadLetterReason.BAD_JSON),
    (b"[]", DeadLetterReason.NOT_AN_OBJECT),
    (b'{"alert_id": "x"}', DeadLetterReason.MISSING_FIELD),
    (make_alert().model_dump_json().replace("firing", "on fire").encode(),
     DeadLetterReason.WRONG_TYPE),
])
def test_messages_that_are_not_alerts_get_a_dead_letter_reason(
    value: bytes | None, reason: DeadLetterReason,
) -> None:
    decoded = decode_alert(value)
    assert isinstance(decoded, tuple) and decoded[0] is reason
    alert = make_alert()
    assert decode_alert(alert.model_dump_json().encode()) == alert


def test_claim_verdicts_and_key_names() -> None:
    result = doctest.testmod(costflux.agents.notify_redis)
    assert result.attempted and not result.failed
    assert SECRET not in costflux.agents.notify_redis.slot_key("ns", URL)
