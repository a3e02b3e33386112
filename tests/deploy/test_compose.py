"""docker-compose.yml as a running stack: health checks, start order, bridge and collector.

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

from costflux.core.bridge import RequestQueue, read_request_queues
from costflux.embedded import free_port
from costflux.streams.bridge import parse_metrics_page
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
    assert any(argv == ["collect"] for argv in commands.values())
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


def test_mock_vllm_queue_gauges_follow_its_load() -> None:
    """In flight = rate x latency: up to --max-num-seqs run, the rest wait, as the bridge reads."""
    render = _mock_vllm().render

    def queue(requests_per_s: float, max_num_seqs: int) -> RequestQueue:
        samples = parse_metrics_page(render("llama-2-7b", 10, requests_per_s, 512, 128,
                                            max_num_seqs))
        (found,) = read_request_queues(samples, kind="vllm").items()
        assert found[0] == "llama-2-7b"
        return found[1]

    # 128 tokens at 20 ms: 2.56 s a request.
    assert queue(5.0, 8) == RequestQueue(waiting=5, running=8)  # 12.8 in flight
    assert queue(5.0, 256) == RequestQueue(waiting=0, running=13)
    assert queue(1.0, 8) == RequestQueue(waiting=0, running=3)


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


# --- the collector --------------------------------------------------------------------------------


def test_the_collector_listens_on_the_otlp_port_and_publishes_where_workers_read() -> None:
    services = costflux_services()
    (name,) = [name for name, service in services.items() if service["command"] == ["collect"]]
    collector = services[name]
    env = collector["environment"]
    assert env["COSTFLUX_HTTP_HOST"] == "0.0.0.0"  # noqa: S104 - a container listens on its IP
    assert env["COSTFLUX_HTTP_PORT"] == "4318"  # OTLP/HTTP's port
    assert collector["ports"] == ["4318:4318"]
    # Its own health check, on its port (the image's probes a worker's 8080).
    check = " ".join(collector["healthcheck"]["test"])
    assert "http://127.0.0.1:4318/healthz" in check
    assert collector["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert collector["restart"] == "unless-stopped"
    # The workers' broker, partitions and prices (the same file, mounted the same way).
    workers = [s for s in services.values() if s["command"] == ["worker"]]
    for worker in workers:
        for var in ("COSTFLUX_KAFKA_BOOTSTRAP", "COSTFLUX_TOPIC_PARTITIONS",
                    "COSTFLUX_PRICING_FILE"):
            assert env[var] == worker["environment"][var], var
        pricing_dir = env["COSTFLUX_PRICING_FILE"].rpartition("/")[0]
        assert compose_mounts(collector)[pricing_dir] == compose_mounts(worker)[pricing_dir]
