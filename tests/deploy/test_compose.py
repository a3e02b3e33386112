"""docker-compose.yml as a running stack: health checks, start order, and the vLLM bridge.

No Docker here: the compose file is read as data, and the pieces that run on plain Python (the
mock vLLM server and the bridge's own command line) are run for real on loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from costflux.embedded import free_port
from tests.deploy.manifests import (
    DEPLOY,
    compose,
    compose_mounts,
    costflux_services,
    load_script,
)

MOCK_VLLM = DEPLOY / "compose" / "mock_vllm.py"


def _services() -> dict[str, dict[str, Any]]:
    return compose()["services"]  # type: ignore[no-any-return]


def _one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def _flag(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _mock_vllm() -> ModuleType:
    return load_script(MOCK_VLLM)


# --- health and start order -----------------------------------------------------------------------


def test_every_long_running_service_has_a_health_check() -> None:
    costflux = costflux_services()
    for name, service in _services().items():
        check = service.get("healthcheck", {})
        if check.get("disable"):
            # Only a one-shot job, or a costflux process without HTTP, may go without; those
            # must say so, or the image's own check (a worker's /healthz) marks them unhealthy.
            assert _one_shot(service) or (name in costflux and service["command"] != ["worker"]), (
                name
            )
        else:
            assert check.get("test"), f"{name}: no health check (or `disable: true` and why)"


def test_services_wait_only_for_dependencies_that_can_become_healthy() -> None:
    services = _services()
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                check = services[dependency].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dependency} to be healthy, which has no health check"
                )


def test_the_stack_has_every_part() -> None:
    services = _services()
    commands = {name: service.get("command", []) for name, service in costflux_services().items()}
    workers = [name for name, argv in commands.items() if argv == ["worker"]]
    assert len(workers) == 2
    assert any(argv[:1] == ["notify"] for argv in commands.values())
    assert any(argv[:2] == ["bridge", "prometheus"] for argv in commands.values())
    assert any(argv[:1] == ["replay"] for argv in commands.values())  # the load
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


# --- the bridge and the mock vLLM server ----------------------------------------------------------


def test_the_bridge_scrapes_the_mock_vllm_service() -> None:
    services = _services()
    (bridge,) = [s for s in costflux_services().values() if s["command"][:1] == ["bridge"]]
    url = urlsplit(_flag(bridge["command"], "--url"))
    mock = services[url.hostname or ""]
    assert str(url.port) == _flag(mock["command"], "--port")
    assert url.path == "/metrics"
    # The script the mock runs is this repository's, mounted where its command finds it.
    script = mock["command"][1]
    directory, _, file_name = script.rpartition("/")
    assert compose_mounts(mock)[directory] / file_name == MOCK_VLLM
    assert bridge["depends_on"][url.hostname]["condition"] == "service_healthy"


def test_mock_vllm_counters_grow_like_a_serving_vllm() -> None:
    render = _mock_vllm().render

    def samples(elapsed_s: float) -> dict[str, float]:
        text = render("llama-2-7b", elapsed_s, 5.0, 512, 128)
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if not sample.name.endswith("_bucket")
        }

    before, after = samples(10), samples(20)
    assert after["vllm:request_success_total"] == 100 > before["vllm:request_success_total"]
    assert after["vllm:prompt_tokens_total"] == 100 * 512
    assert after["vllm:generation_tokens_total"] == 100 * 128
    assert after["vllm:request_prompt_tokens_count"] == 100
    assert after["vllm:e2e_request_latency_seconds_count"] == 100


def test_the_compose_bridge_command_turns_the_mock_into_usage_events() -> None:
    """The compose bridge's own argv, pointed at the mock run here, prints usage events."""
    (bridge,) = [s for s in costflux_services().values() if s["command"][:1] == ["bridge"]]
    argv = list(bridge["command"])
    del argv[argv.index("--metrics-port") : argv.index("--metrics-port") + 2]
    port = free_port()
    mock = subprocess.Popen(  # noqa: S603 - our own script
        [sys.executable, str(MOCK_VLLM), "--host", "127.0.0.1", "--port", str(port),
         "--requests-per-second", "40"],
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                    break
            except OSError:
                assert time.monotonic() < deadline, "the mock vLLM server did not start"
                time.sleep(0.1)
        argv[argv.index("--url") + 1] = url
        argv[argv.index("--interval") + 1] = "1s"
        result = subprocess.run(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "costflux", *argv, "--once", "--print"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    finally:
        mock.terminate()
        mock.wait(10)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events, result.stderr
    assert {event["model"] for event in events} == {"llama-2-7b"}
    assert {(event["input_tokens"], event["output_tokens"]) for event in events} == {(512, 128)}
