"""costflux claims one global name: a package called ``agents``, ``streams`` or ``schemas``
installed beside it (the OpenAI Agents SDK is imported as ``agents``) and costflux both import,
each as itself (docs/architecture.md, "Packages")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("name", ["agents", "streams", "schemas"])
def test_a_foreign_package_of_a_common_name_and_costflux_both_import(
        tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("WHO = 'someone else'\n")
    code = (f"import {name}, costflux.agents.app, costflux.streams.ingest, "
            "costflux.schemas.usage, costflux.cli, costflux.gateway.proxy; "
            f"print({name}.WHO, costflux.agents.app.build_worker.__module__, "
            "costflux.schemas.usage.UsageEvent.__module__)")
    # The foreign package comes first on the path, as an installed one would be found.
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["someone", "else", "costflux.agents.app", "costflux.schemas.usage"]
