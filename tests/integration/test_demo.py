"""Smoke test of the main job: ``costflux demo`` on the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from costflux.embedded import free_port

pytestmark = pytest.mark.integration


def test_demo_serves_metrics_within_bounded_time_and_stops_cleanly() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    env["COSTFLUX_HTTP_PORT"] = str(port)
    started = time.monotonic()
    demo = subprocess.Popen(
        [sys.executable, "-m", "costflux", "demo", "--duration", "15", "--speed", "0",
         "--limit", "3000", "--no-table"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
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
