"""Every costflux error is one line on stderr and the exit code docs/commands-and-api.md gives."""

from __future__ import annotations

import ast
import builtins
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import costflux.cli.pricing
from costflux.cache.embedder import EmbedderError
from costflux.cli import main
from costflux.core.alert_rules import RulesError
from costflux.core.budgets import BudgetError
from costflux.core.errors import ConfigError, CostfluxError, InputError, UnavailableError
from costflux.core.money import MoneyError
from costflux.core.pricing import PricingError
from costflux.gateway.identity import KeysFileError
from costflux.streams.budget_counters import CountersUnavailable
from costflux.streams.kafka import KafkaSetupError
from costflux.streams.otlp import OtlpDecodeError
from tests.paths import REPO

DOCUMENTED = {CostfluxError: 1, ConfigError: 2, InputError: 65, UnavailableError: 69}


def test_the_documented_table_is_the_code() -> None:
    page = (REPO / "docs/commands-and-api.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| (\d+) \| `(\w+)` \|", page, re.M))
    assert {name: int(code) for code, name in rows.items()} == {
        kind.__name__: code for kind, code in DOCUMENTED.items()}
    assert all(kind.exit_code == code for kind, code in DOCUMENTED.items())


@pytest.mark.parametrize(("error", "code"), [
    (CostfluxError("refused"), 1),
    (ConfigError("COSTFLUX_X: bad"), 2),
    (PricingError("prices.yaml:3: model_costs.m: missing output_tokens"), 2),
    (RulesError("rules.yaml:2: rules[0].op: '='"), 2),
    (BudgetError("budgets.yaml:2: budgets[0].amount: must be more than 0 dollars"), 2),
    (KeysFileError("keys.yaml:2: keys[0].id: not a key id"), 2),
    (InputError("trace.csv:4: not a number"), 65),
    (MoneyError("finer than 1e-12"), 65),
    (OtlpDecodeError("not an export request in application/x-protobuf"), 65),
    (UnavailableError("redis://127.0.0.1:1 did not answer"), 69),
    (KafkaSetupError("cannot reach the broker at 127.0.0.1:1"), 69),
    (CountersUnavailable("Redis did not answer"), 69),
    (EmbedderError("the model files are missing"), 69),
])
def test_a_command_failing_with_a_costflux_error_exits_with_its_code(
    error: CostfluxError, code: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def fail(*_: object) -> int:
        raise error

    monkeypatch.setattr(costflux.cli.pricing, "_run_check", fail)
    assert main(["pricing", "check", "prices.yaml"]) == code
    assert capsys.readouterr().err == f"costflux pricing check: {error}\n"


@pytest.mark.parametrize(("argv", "line", "code"), [
    (["gateway", "key-id"], "costflux gateway key-id: give the API key on stdin, e.g. "
     'printf %s "$OPENAI_API_KEY" | costflux gateway key-id', 2),
    (["cache"], "costflux cache: give the upstream API's base URL: --upstream https://... "
     "(or COSTFLUX_CACHE_UPSTREAM)", 2),
    (["gateway", "--upstream", "https://api.openai.com"], "costflux gateway: set "
     "COSTFLUX_KAFKA_BOOTSTRAP and COSTFLUX_REDIS_URL (the usage topic the workers read, the "
     "Redis they write budgets' spend to)", 2),
    (["bridge", "prometheus", "--url", "ftp://x", "--print"], "costflux bridge prometheus: "
     "--url: 'ftp://x' is not an http(s) URL such as http://127.0.0.1:8000/metrics", 2),
    (["export", "focus", "--format", "parquet"],
     "costflux export focus: --format parquet needs --output FILE", 2),
    (["replay", "trace.csv"],
     "costflux replay: set COSTFLUX_KAFKA_BOOTSTRAP to the broker to replay into", 2),
])
def test_a_failure_raised_in_a_command_is_one_line_naming_the_command(
    argv: list[str], line: str, code: int, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [name for name in os.environ if name.startswith("COSTFLUX_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # key-id: no key given
    assert main(argv) == code
    assert capsys.readouterr().err == f"{line}\n"  # once: the command printed nothing itself


def test_a_bad_setting_exits_2() -> None:
    done = _costflux(["pricing", "check", str(REPO / "costflux/data/pricing.yaml")],
                     COSTFLUX_WINDOW_SIZES="soon")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "costflux pricing check: invalid configuration:\n  COSTFLUX_WINDOW_SIZES")


def test_a_bad_price_file_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("model_costs:\n  m:\n    input_tokens: 0.001\n    output_tokens: -1\n")
    done = _costflux(["pricing", "check", str(prices)])
    assert done.returncode == 2
    assert done.stderr == (f"costflux pricing check: {prices}:4: model_costs.m.output_tokens: "
                           "a price cannot be negative\n")


def _costflux(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    return subprocess.run([sys.executable, "-m", "costflux", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60, cwd=REPO)


_BUILTIN_ERRORS = {name for name, value in vars(builtins).items()
                   if isinstance(value, type) and issubclass(value, BaseException)}


def test_every_public_exception_is_a_costflux_error() -> None:
    """A public exception class based on built-in ones only is missing from the hierarchy
    (private control-flow exceptions, named ``_...``, may be)."""
    orphans = []
    for root in ("costflux", "streams", "agents", "schemas"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.ClassDef) and not node.name.startswith("_")
                        and path.name != "errors.py" and node.bases
                        and {ast.unparse(b) for b in node.bases} <= _BUILTIN_ERRORS):
                    orphans.append(f"{path.relative_to(REPO)}: {node.name}")
    assert orphans == []
