"""Fixtures for tests that run workers as subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from costflux.embedded import EmbeddedRedis
from costflux.settings import Settings
from tests.integration.expected import azure_rows
from tests.integration.test_pipeline import produce_trace, wait_for_requests
from tests.integration.worker_process import WorkerProcess


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start a worker subprocess (``env``: extra variables, e.g. COSTFLUX_FAILPOINTS;
    ``command``: another long-running command, e.g. collect); every one still running is
    stopped after the test."""
    workers: list[WorkerProcess] = []

    def start(settings: Settings, env: dict[str, str] | None = None,
              command: str = "worker") -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / "logs", env, command)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def azure_worker(
    settings_for: Callable[..., Settings], start_worker: Callable[[Settings], WorkerProcess],
) -> WorkerProcess:
    """A worker that has served the whole bundled Azure trace."""
    worker = start_worker(settings_for())
    worker.wait_ready()
    produce_trace(worker.settings, limit=None, speed=0)
    wait_for_requests(worker, len(azure_rows()))
    return worker


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A Redis for this test alone (fault tests stop, crash, empty or restart it), with an
    append-only file fsynced every second, so a restart keeps its data as production's
    does."""
    with EmbeddedRedis() as server:
        yield server
