"""A local /metrics server per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bridge.pages import MetricsServer


@pytest.fixture
def metrics_server() -> Iterator[MetricsServer]:
    server = MetricsServer().start()
    try:
        yield server
    finally:
        server.stop()
