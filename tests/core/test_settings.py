"""Settings: environment and config-file parsing, errors that name the variable, secrets kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from faust.utils.urls import urllist
from pydantic import SecretStr

from costflux.settings import ConfigError, Settings, load_settings
from costflux.streams.kafka import (
    LibrdkafkaLogBridge,
    client_config,
    consumer_config,
    faust_broker_options,
    producer_config,
    redact,
)

SECRET = "hunter2-do-not-print"


def test_defaults_need_no_environment() -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap is None and settings.embedded_broker
    assert settings.redis_url is None and settings.embedded_redis
    assert settings.window_sizes == (60, 3600)
    assert settings.topic_usage == "llm.usage.v1"


def test_environment_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTFLUX_WINDOW_SIZES", "60,3600")
    monkeypatch.setenv("COSTFLUX_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    monkeypatch.setenv("COSTFLUX_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("COSTFLUX_PARTITION_IDLE_S", "2.5")
    monkeypatch.setenv("COSTFLUX_LOG_LEVEL", "debug")
    monkeypatch.setenv("COSTFLUX_METRIC_LABEL_ALLOW", '{"team": ["search", "ads"]}')

    settings = load_settings()

    assert settings.window_sizes == (60, 3600)
    assert settings.kafka_bootstrap == "127.0.0.1:9092" and not settings.embedded_broker
    assert settings.topic_partitions == 12
    assert settings.partition_idle_s == 2.5
    assert settings.log_level == "debug"
    assert settings.metric_label_allow == {"team": ["search", "ads"]}


@pytest.mark.parametrize(
    ("value", "expected"), [("300", (300,)), (" 60 , 300 ,3600", (60, 300, 3600))]
)
def test_window_sizes_spellings(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[int, ...]
) -> None:
    monkeypatch.setenv("COSTFLUX_WINDOW_SIZES", value)
    assert load_settings().window_sizes == expected


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("WINDOW_SIZES", "60,abc"),
        ("WINDOW_SIZES", "60,90"),
        ("WINDOW_SIZES", "0"),
        ("WINDOW_SIZES", "7"),
        ("TOPIC_PARTITIONS", "0"),
        ("HTTP_PORT", "eighty"),
        ("LOG_LEVEL", "loud"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("INGEST_FLUSH_S", "-1"),
    ],
)
def test_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    monkeypatch.setenv(f"COSTFLUX_{field}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"COSTFLUX_{field}:" in message
    assert message.count("COSTFLUX_") == message.count(f"COSTFLUX_{field}")


def test_config_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "costflux.yaml"
    config.write_text(
        "topic_usage: usage.from-file\nwindow_sizes: [60, 600]\nhttp_port: 9000\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("COSTFLUX_CONFIG_FILE", str(config))

    settings = load_settings()

    assert settings.topic_usage == "usage.from-file"
    assert settings.window_sizes == (60, 600)
    assert settings.http_port == 9000
    assert settings.config_file == config


def test_environment_beats_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "costflux.yaml"
    config.write_text("http_port: 9000\ntopic_usage: usage.from-file\n", encoding="utf-8")
    monkeypatch.setenv("COSTFLUX_CONFIG_FILE", str(config))
    monkeypatch.setenv("COSTFLUX_HTTP_PORT", "9100")

    settings = load_settings()

    assert settings.http_port == 9100
    assert settings.topic_usage == "usage.from-file"


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ("topic_usgae: typo\n", "COSTFLUX_TOPIC_USGAE"),
        ("- just\n- a list\n", "COSTFLUX_CONFIG_FILE"),
        ("http_port: [unclosed\n", "COSTFLUX_CONFIG_FILE"),
    ],
)
def test_bad_config_file_names_the_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str, named: str
) -> None:
    config = tmp_path / "costflux.yaml"
    config.write_text(content, encoding="utf-8")
    monkeypatch.setenv("COSTFLUX_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("COSTFLUX_CONFIG_FILE", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigError, match="COSTFLUX_CONFIG_FILE"):
        load_settings()


def _sasl_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "kafka_bootstrap": "127.0.0.1:9092,127.0.0.1:9093",
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "costflux",
        "kafka_sasl_password": SecretStr(SECRET),
        "redis_password": SecretStr(SECRET),
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_secrets_stay_out_of_repr_and_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COSTFLUX_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("COSTFLUX_REDIS_PASSWORD", SECRET)
    settings = load_settings()
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)


@pytest.mark.parametrize(
    "bad_env", [{"COSTFLUX_WINDOW_SIZES": "60,90"}, {"COSTFLUX_TOPIC_PARTITIONS": "-1"}]
)
def test_secrets_stay_out_of_config_errors(
    monkeypatch: pytest.MonkeyPatch, bad_env: dict[str, str]
) -> None:
    monkeypatch.setenv("COSTFLUX_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("COSTFLUX_REDIS_PASSWORD", SECRET)
    for name, value in bad_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert SECRET not in str(caught.value)


def test_secrets_stay_out_of_config_file_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "costflux.yaml"
    config.write_text(f"kafka_sasl_password: {SECRET}\nwindow_sizes: [60, 90]\n", "utf-8")
    monkeypatch.setenv("COSTFLUX_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "COSTFLUX_WINDOW_SIZES" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_client_config_maps_security_settings(tmp_path: Path) -> None:
    settings = _sasl_settings(
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=tmp_path / "ca.pem",
        kafka_ssl_certfile=tmp_path / "client.pem",
        kafka_ssl_keyfile=tmp_path / "client.key",
    )
    assert client_config(settings) == {
        "bootstrap.servers": "127.0.0.1:9092,127.0.0.1:9093",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "costflux",
        "sasl.password": SECRET,
        "ssl.ca.location": str(tmp_path / "ca.pem"),
        "ssl.certificate.location": str(tmp_path / "client.pem"),
        "ssl.key.location": str(tmp_path / "client.key"),
    }


def test_redact_hides_secrets_for_logging() -> None:
    settings = _sasl_settings()
    for config in (
        client_config(settings),
        producer_config(settings),
        consumer_config(settings, "group", **{"sasl.oauthbearer.client.secret": SECRET}),
    ):
        assert config["sasl.password"] == SECRET
        safe = redact(config)
        assert SECRET not in repr(safe)
        assert safe["sasl.password"] == "***"
        assert safe["sasl.username"] == "costflux"
        assert safe.keys() == config.keys()


def test_client_tuning_is_applied_and_overridable() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9092")
    consumer = consumer_config(settings, "g", **{"session.timeout.ms": 10000})
    assert consumer["group.id"] == "g"
    assert consumer["enable.auto.commit"] is False
    assert consumer["session.timeout.ms"] == 10000
    assert consumer["fetch.queue.backoff.ms"] == 10
    assert isinstance(consumer["logger"], LibrdkafkaLogBridge)
    producer = producer_config(settings)
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert producer["partitioner"] == "murmur2_random"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"kafka_bootstrap": None}, "COSTFLUX_KAFKA_BOOTSTRAP"),
        ({"kafka_sasl_mechanism": None}, "COSTFLUX_KAFKA_SASL_MECHANISM"),
        ({"kafka_sasl_password": None}, "COSTFLUX_KAFKA_SASL_PASSWORD"),
        ({"kafka_security_protocol": "PLAINTEXT"}, "COSTFLUX_KAFKA_SECURITY_PROTOCOL"),
    ],
)
def test_incomplete_kafka_security_is_a_config_error(
    overrides: dict[str, object], named: str
) -> None:
    settings = _sasl_settings(**overrides)
    for build in (client_config, faust_broker_options):
        with pytest.raises(ConfigError, match=named) as caught:
            build(settings)
        assert SECRET not in str(caught.value)


def test_faust_options_match_the_librdkafka_ones() -> None:
    options = faust_broker_options(_sasl_settings())

    assert [str(url) for url in urllist(options["broker"], default_scheme="kafka")] == [
        "kafka://127.0.0.1:9092",
        "kafka://127.0.0.1:9093",
    ]
    assert options["broker_session_timeout"] == 6
    assert options["broker_rebalance_timeout"] == 6
    assert options["broker_heartbeat_interval"] == 1
    credentials = options["broker_credentials"]
    assert credentials.username == "costflux" and credentials.password == SECRET
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is None
    assert SECRET not in repr(credentials)


def test_faust_options_without_security_carry_no_credentials() -> None:
    options = faust_broker_options(Settings(kafka_bootstrap="127.0.0.1:9092"))
    assert options["broker"] == "kafka://127.0.0.1:9092"
    assert "broker_credentials" not in options


def test_faust_ssl_with_unreadable_cafile_names_it(tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9093",
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=tmp_path / "absent-ca.pem",
    )
    with pytest.raises(ConfigError, match="COSTFLUX_KAFKA_SSL_CAFILE"):
        faust_broker_options(settings)


def test_replication_factor_reaches_faust_changelogs() -> None:
    """Faust creates the changelog topics (the tables' only durable copy) itself; without the
    setting they get 1 replica, with it as many as the operator asked for."""
    assert faust_broker_options(Settings(kafka_bootstrap="k:9092"))["topic_replication_factor"] == 1
    replicated = Settings(kafka_bootstrap="k:9092", topic_replication_factor=3)
    assert faust_broker_options(replicated)["topic_replication_factor"] == 3
