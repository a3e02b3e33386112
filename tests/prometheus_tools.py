"""Where the tests find Debian's Prometheus binaries: promtool and the prometheus server.

Each is looked up in its environment variable (PROMTOOL, PROMETHEUS), then on PATH, then where
./run-tests unpacks Debian's `prometheus` package (.venv/promtool/usr/bin, inside the repository).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.paths import REPO

UNPACKED = REPO / ".venv" / "promtool" / "usr" / "bin"
HOW_TO_GET = (
    "Debian's `prometheus` package ships both /usr/bin/promtool and /usr/bin/prometheus; "
    "./run-tests unpacks it into .venv/promtool (`apt-get download prometheus && dpkg-deb -x "
    "prometheus_*.deb .venv/promtool`) without installing or starting anything"
)


def find_prometheus_tool(name: str) -> str | None:
    """The path of ``promtool`` or ``prometheus``, or None where neither place has it."""
    found = os.environ.get(name.upper()) or shutil.which(name)
    if found:
        return found
    unpacked = UNPACKED / name
    return str(unpacked) if os.access(unpacked, os.X_OK) else None


def tool_or_skip(name: str) -> str:
    """The path of ``promtool`` or ``prometheus``; the test is skipped, saying why, without it."""
    found = find_prometheus_tool(name)
    if found is None:
        pytest.skip(f"{name} not found: put it on PATH or set {name.upper()} ({HOW_TO_GET})")
    return found


def run_promtool(*args: str, timeout_s: float = 120) -> str:
    """Run promtool, assert it succeeded, and return what it printed."""
    result = subprocess.run(  # noqa: S603 - fixed arguments, the repository's own files
        [tool_or_skip("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
