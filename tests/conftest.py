"""Shared fixtures: one embedded broker and Redis per session, unique names, test settings."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from costflux.embedded import EmbeddedBroker, EmbeddedRedis, free_port
from costflux.settings import Settings

# Property tests judge correctness, not speed (bench/ does that): on a loaded machine a
# 200 ms example is no failure. A deadline or the too-slow health check made them fail one
# run in many when other processes shared the cores.
hypothesis_settings.register_profile("costflux", deadline=None,
                                     suppress_health_check=[HealthCheck.too_slow])
hypothesis_settings.load_profile("costflux")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the developer's COSTFLUX_* variables so no test reads config from outside the repo."""
    for name in list(os.environ):
        if name.startswith("COSTFLUX_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Start one embedded Tansu broker for the session and yield its host:port."""
    with EmbeddedBroker() as broker:
        yield broker.bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Start one embedded Redis for the session and yield its redis:// URL."""
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """Yield a client on the session Redis, emptied before the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Return a function making names no other test uses, e.g. unique("usage") -> usage-1a2b3c4d."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def settings_for(
    kafka_bootstrap: str,
    redis_url: str,
    unique: Callable[[str], str],
    tmp_path: Path,
) -> Callable[..., Settings]:
    """Return a factory of Settings on the session broker and Redis, with unique names."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "redis_url": redis_url,
            "topic_usage": unique("usage"),
            "topic_gpu": unique("gpu"),
            "topic_alerts": unique("alerts"),
            "topic_deadletter": unique("deadletter"),
            "consumer_group": unique("group"),
            "http_port": free_port(),
            "data_dir": tmp_path / unique("data"),
            # Tests keep table state in memory (workers sharing a data_dir would contend for
            # RocksDB's lock); tests/integration/test_scale_out.py runs the RocksDB store.
            "table_store": "memory",
        }
        values.update(overrides)
        return Settings(**values)

    return make
