"""Fixtures for tests that run workers as subprocesses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from costflux.settings import Settings
from tests.integration.worker_process import WorkerProcess


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / "logs")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
