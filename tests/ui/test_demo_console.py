"""``costflux demo`` points at the console first, and works behind a token."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from costflux.embedded import free_port
from tests.ui.conftest import TOKEN

pytestmark = pytest.mark.integration


def test_the_demo_prints_the_console_first_and_reads_its_worker_with_the_token() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    env |= {"COSTFLUX_HTTP_PORT": str(port), "COSTFLUX_HTTP_TOKEN": TOKEN}
    demo = subprocess.run(
        [sys.executable, "-m", "costflux", "demo", "--duration", "8", "--speed", "0",
         "--limit", "2000", "--no-table"],
        env=env, capture_output=True, text=True, timeout=240, check=False)
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    assert output.splitlines()[0] == (f"cost console: http://127.0.0.1:{port}/ui/  "
                                      "(sign in with COSTFLUX_HTTP_TOKEN)")
    # The demo's own table and summary come through the token-protected API.
    assert "requests=2000" in output, output
    assert TOKEN not in output
