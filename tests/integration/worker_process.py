"""Run ``costflux worker`` as a real subprocess and read it through its HTTP endpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from costflux.settings import Settings

_ENV_FIELDS = (
    "kafka_bootstrap", "redis_url", "topic_usage", "topic_gpu", "topic_alerts",
    "topic_deadletter", "consumer_group", "http_port", "data_dir",
    "topic_partitions", "allowed_lateness_s", "partition_idle_s", "dedup_horizon_s",
    "pricing_file", "ingest_flush_s", "rules_file", "budgets_file",
    "eval_interval_s", "eval_settle_s", "eval_backfill_s", "advice_file", "table_store",
    "window_max_rows", "metric_label_cap", "ingest_batch_size",
)


def settings_env(settings: Settings) -> dict[str, str]:
    """The COSTFLUX_* variables that make a worker process use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    for name in _ENV_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            env[f"COSTFLUX_{name.upper()}"] = str(value)
    env["COSTFLUX_WINDOW_SIZES"] = ",".join(str(s) for s in settings.window_sizes)
    env["COSTFLUX_LOG_LEVEL"] = "info"
    return env


class WorkerProcess:
    """One worker subprocess (or another long-running command: ``collect``); its log goes to
    a file for post-mortems."""

    def __init__(self, settings: Settings, log_dir: Path,
                 env: dict[str, str] | None = None, command: str = "worker") -> None:
        self.settings = settings
        self.command = command
        self.base = f"http://127.0.0.1:{settings.http_port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{command}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "costflux", command],
            env=settings_env(settings) | (env or {}), stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def get(self, path: str, **params: str) -> tuple[int, Any]:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            # Generous: a worker catching up on a backlog (its detector evaluating days of
            # event time) answers late on a loaded machine, and a late answer is not an error.
            with urllib.request.urlopen(url, timeout=30) as response:
                body = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            body, status = error.read(), error.code
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def wait_ready(self, timeout_s: float = 90) -> None:
        self.wait_for(lambda: self.get("/readyz")[0] == 200, timeout_s, "ready")

    def wait_for(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.command} exited ({self.process.returncode}):\n"
                                     + self.log_tail())
            try:
                if condition():
                    return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.command} not {what} within {timeout_s}s:\n"
                             f"{self.log_tail()}")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of samples of ``name`` whose labels include ``labels`` (0 when absent)."""
        status, text = self.get("/metrics")
        assert status == 200
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    total += sample.value
        return total

    def allocation(self, window: str, aggregate: str) -> dict[str, dict[str, Any]]:
        status, body = self.get("/model/allocation", window=window, aggregate=aggregate)
        assert status == 200, body
        return {name: row for group in body["data"] for name, row in group.items()}

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
