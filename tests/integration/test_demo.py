"""Smoke test of the main job: ``costflux demo`` on the embedded default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from costflux.embedded import free_port

pytestmark = pytest.mark.integration


def _demo(port: int, *args: str) -> subprocess.Popen[bytes]:
    """``costflux demo ARGS`` with its worker on ``port``, output captured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    env["COSTFLUX_HTTP_PORT"] = str(port)
    return subprocess.Popen([sys.executable, "-m", "costflux", "demo", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_demo_serves_metrics_within_bounded_time_and_stops_cleanly() -> None:
    port = free_port()
    started = time.monotonic()
    demo = _demo(port, "--duration", "15", "--speed", "0", "--limit", "3000", "--no-table")
    try:
        metrics = ""
        while time.monotonic() - started < 90 and demo.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    metrics = r.read().decode()
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        assert "llm_requests_total" in metrics or "# HELP llm_requests" in metrics
        output, _ = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = output.decode(errors="replace")
    assert demo.returncode == 0, text
    assert "requests=3000" in text, text


def test_sigterm_stops_the_demo_and_its_worker_as_ctrl_c_does() -> None:
    """`kill` or `timeout` on a demo left running: the worker is stopped before the broker
    and Redis, so no worker is left behind (it was, stuck retrying a broker that was gone)."""
    port = free_port()
    demo = _demo(port, "--speed", "0", "--no-table")
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and demo.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        assert demo.poll() is None, "the demo exited before its worker was ready"
        demo.send_signal(signal.SIGTERM)
        output, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    text = output.decode(errors="replace")
    assert demo.returncode == 0, text
    assert "stopping" in text, text
    with pytest.raises((urllib.error.URLError, OSError)):  # the worker is gone with it
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)  # noqa: S310
