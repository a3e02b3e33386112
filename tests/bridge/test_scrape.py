"""The scrape loop against a real local HTTP server: failures, gaps, re-sends, the command."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from costflux.cli import main
from costflux.cli.bridge import LABELS_ENV, add_bridge_arguments, bridge_settings
from costflux.core.bridge import FlagRequired, RequestQueue
from costflux.embedded import free_port
from costflux.streams.bridge import (
    BridgeMetrics,
    BridgeOptions,
    PrometheusBridge,
    ScrapeError,
    fetch_metrics_page,
)
from costflux.streams.producer import ProducerError
from tests.bridge.pages import MODEL, VLLM_TEXT, MetricsServer, grown, vllm_page
from tests.bridge.test_core import tgi_page, totals
from tests.paths import REPO


def options(url: str, *flags: str, environ: Mapping[str, str] | None = None) -> BridgeOptions:
    parser = argparse.ArgumentParser()
    add_bridge_arguments(parser)
    return bridge_settings(parser.parse_args(["--url", url, *flags]), environ or {}).scrape


class Collected:
    """A send function that keeps what it got, or fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[Mapping[str, Any]]] = []
        self.failing = False

    def __call__(self, events: Sequence[Mapping[str, Any]]) -> None:
        if self.failing:
            raise ProducerError("broker down")
        self.batches.append(list(events))


def scrape_error_count(registry: CollectorRegistry, reason: str) -> float | None:
    return registry.get_sample_value("costflux_bridge_scrape_errors_total", {"reason": reason})


def queue(registry: CollectorRegistry, part: str, source: str,
          model: str = MODEL) -> float | None:
    return registry.get_sample_value(f"costflux_inference_requests_{part}",
                                     {"model": model, "source": source})


def test_the_served_fixture_reads_as_it_was_written(metrics_server: MetricsServer) -> None:
    metrics_server.serve(VLLM_TEXT)
    assert fetch_metrics_page(metrics_server.url, 5) == VLLM_TEXT


def test_a_server_that_is_down_is_retried_and_its_gap_covered_not_zero_filled(
    metrics_server: MetricsServer,
) -> None:
    registry = CollectorRegistry()
    sent = Collected()
    bridge = PrometheusBridge(options(metrics_server.url, "--timeout", "0.5"), sent,
                              metrics=BridgeMetrics(registry))
    metrics_server.serve(VLLM_TEXT, grown(prompt=100, generation=20, success=2),
                         (500, "engine dead"), "<html>not metrics</html>",
                         "# TYPE up gauge\nup 1\n")
    observations = [bridge.scrape() for _ in range(5)]
    assert observations[0] is not None and observations[0].baseline
    assert observations[1] is not None and totals(observations[1].events) == (2, 100, 20, 0)
    assert observations[2:] == [None, None, None]
    metrics_server.stop()
    assert bridge.scrape() is None  # connection refused
    metrics_server.delay_s = 2.0
    metrics_server.start()
    assert bridge.scrape() is None  # no answer within the timeout
    metrics_server.delay_s = 0.0
    status = bridge.status
    assert (status.scrapes, status.scrape_errors, status.consecutive_errors) == (2, 5, 5)
    assert status.last_error is not None and status.last_error.startswith("timeout")
    assert {reason: scrape_error_count(registry, reason) for reason in (
        "http_status", "unparsable", "bad_page", "connection", "timeout")} == dict.fromkeys(
        ("http_status", "unparsable", "bad_page", "connection", "timeout"), 1.0)

    # Back up: this interval's increase covers everything since the last good scrape.
    metrics_server.serve(grown(prompt=250, generation=70, success=5))
    observation = bridge.scrape()
    assert observation is not None and totals(observation.events) == (3, 150, 50, 0)
    assert bridge.status.consecutive_errors == 0
    assert [len(batch) for batch in sent.batches] == [2, 3]
    assert registry.get_sample_value("costflux_bridge_scrapes_total") == 3
    assert registry.get_sample_value("costflux_bridge_usage_events_total") == 5


def test_a_restarted_server_is_logged_and_counted_from_zero(
    metrics_server: MetricsServer, caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    bridge = PrometheusBridge(options(metrics_server.url), Collected(),
                              metrics=BridgeMetrics(registry))
    metrics_server.serve(grown(prompt=500, generation=50, success=5),
                         grown(prompt=-4, generation=-5, success=0))  # went down: a reset
    bridge.scrape()
    observation = bridge.scrape()
    assert observation is not None
    # Every counter went down: each counts its new value (1 request, 1 + 2 tokens).
    assert totals(observation.events) == (1, 1, 2, 0)
    assert bridge.status.counter_resets == 1
    assert registry.get_sample_value("costflux_bridge_counter_resets_total") == 1
    assert "counter reset" in caplog.text


def test_the_queue_gauges_show_the_last_good_scrape_and_go_when_a_scrape_fails(
    metrics_server: MetricsServer,
) -> None:
    registry = CollectorRegistry()
    bridge = PrometheusBridge(options(metrics_server.url, "--source", "pod-a",
                                      "--timeout", "0.5"),
                              Collected(), metrics=BridgeMetrics(registry))
    metrics_server.serve(vllm_page(waiting=9, running=4), vllm_page(waiting=2, running=4),
                         (500, "engine dead"), vllm_page(waiting=0, running=1))
    bridge.scrape()  # the baseline of the counters is a full reading of the gauges
    assert (queue(registry, "waiting", "pod-a"), queue(registry, "running", "pod-a")) == (9, 4)
    bridge.scrape()
    assert (queue(registry, "waiting", "pod-a"), queue(registry, "running", "pod-a")) == (2, 4)
    assert bridge.status.queues == {MODEL: RequestQueue(2, 4)}

    # A failed scrape: nobody knows the queue now, so the series go rather than stay at 2.
    assert bridge.scrape() is None
    assert queue(registry, "waiting", "pod-a") is None
    assert queue(registry, "running", "pod-a") is None
    assert bridge.status.queues == {}
    assert "costflux_inference_requests_waiting{" not in generate_latest(registry).decode()

    bridge.scrape()  # back: the new values, not the old ones
    assert (queue(registry, "waiting", "pod-a"), queue(registry, "running", "pod-a")) == (0, 1)


def test_a_queue_series_the_page_stops_reporting_is_removed(
    metrics_server: MetricsServer,
) -> None:
    registry = CollectorRegistry()
    bridge = PrometheusBridge(options(metrics_server.url, "--source", "pod-a"), Collected(),
                              metrics=BridgeMetrics(registry))
    no_running = re.sub(r"^vllm:num_requests_running\{.*$\n?", "",
                        vllm_page(waiting=3, running=5), flags=re.M)
    metrics_server.serve(vllm_page(waiting=3, running=5), no_running)
    bridge.scrape()
    assert queue(registry, "running", "pod-a") == 5
    bridge.scrape()
    assert queue(registry, "running", "pod-a") is None
    assert queue(registry, "waiting", "pod-a") == 3


def test_the_model_flag_and_the_source_label_the_queue(metrics_server: MetricsServer) -> None:
    registry = CollectorRegistry()
    metrics_server.serve(vllm_page(waiting=6))
    bridge = PrometheusBridge(options(metrics_server.url, "--model", "opt-125m"), Collected(),
                              metrics=BridgeMetrics(registry))
    bridge.scrape()
    source = options(metrics_server.url).template.source
    assert source.endswith(f"/127.0.0.1:{metrics_server.port}")  # host name / host:port
    assert queue(registry, "waiting", source, model="opt-125m") == 6
    assert queue(registry, "waiting", source) is None


def test_undelivered_events_are_sent_again_with_the_same_ids(
    metrics_server: MetricsServer,
) -> None:
    sent = Collected()
    bridge = PrometheusBridge(options(metrics_server.url), sent)
    metrics_server.serve(VLLM_TEXT, grown(prompt=30, success=3), grown(prompt=50, success=4))
    bridge.scrape()
    sent.failing = True
    first = bridge.scrape()
    assert first is not None and bridge.status.events_unsent == 3
    sent.failing = False
    second = bridge.scrape()
    assert second is not None
    assert sent.batches == [[*first.events, *second.events]]
    assert (bridge.status.events_sent, bridge.status.events_unsent) == (4, 0)


def test_tgi_without_a_model_stops_the_bridge(metrics_server: MetricsServer) -> None:
    metrics_server.serve(tgi_page(1, 0, 10, 2))
    bridge = PrometheusBridge(options(metrics_server.url), Collected())
    with pytest.raises(FlagRequired, match="--model"):
        bridge.scrape()


def test_fetching_from_a_closed_port_is_a_connection_error() -> None:
    with pytest.raises(ScrapeError) as caught:
        fetch_metrics_page(f"http://127.0.0.1:{free_port()}/metrics", 2)
    assert caught.value.reason == "connection"


def test_labels_come_from_the_environment_and_the_flags() -> None:
    parsed = options("http://vllm:8000/metrics", "--label", "team=search", "--label",
                     "app=chat,project=p1", "--deployment", "vllm-a", "--interval", "1m",
                     environ={LABELS_ENV: "team=infra,namespace=ml-prod"})
    assert dict(parsed.template.labels) == {"team": "search", "namespace": "ml-prod",
                                            "app": "chat", "project": "p1"}
    assert (parsed.template.deployment, parsed.interval_s, parsed.timeout_s) == (
        "vllm-a", 60.0, 10.0)
    assert parsed.template.source.endswith("/vllm:8000")


@pytest.mark.parametrize(
    ("flags", "environ", "message"),
    [
        (["--label", "team"], {}, "--label: 'team' is not key=value"),
        (["--label", "=x"], {}, "--label"),
        ([], {LABELS_ENV: "team"}, LABELS_ENV),
        (["--label", "team=" + "x" * 300], {}, "--label / COSTFLUX_BRIDGE_LABELS: team:"),
        ([f"--label=k{i}=v" for i in range(33)], {}, "--label / COSTFLUX_BRIDGE_LABELS"),
        (["--deployment", ""], {}, "--deployment"),
        (["--model", "x" * 300], {}, "--model"),
        (["--kind", "tgi"], {}, "--model: required with --kind tgi"),
        (["--interval", "0"], {}, "--interval"),
        (["--interval", "soon"], {}, "--interval"),
        (["--timeout", "-1"], {}, "--timeout"),
    ],
)
def test_bad_flags_are_errors_naming_the_flag(
    flags: list[str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        options("http://127.0.0.1:8000/metrics", *flags, environ=environ)


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="--url"):
        options("file:///etc/passwd")


def test_a_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="--url") as refused:
        options("http://scraper:s3cret-pw@127.0.0.1:8000/metrics")
    assert "s3cret-pw" not in str(refused.value)


def test_the_command_prints_one_interval_of_events(
    metrics_server: MetricsServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(LABELS_ENV, "namespace=ml-prod")
    metrics_server.serve(VLLM_TEXT, grown(prompt=90, generation=12, success=3, cached=30))
    code = main(["bridge", "prometheus", "--url", metrics_server.url, "--interval", "0.2",
                 "--once", "--print", "--label", "team=search", "--source", "pod-a"])
    assert code == 0
    events = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert totals(events) == (3, 90, 12, 30)
    assert {e["model"] for e in events} == {MODEL}
    assert all(e["labels"] == {"namespace": "ml-prod", "team": "search"} for e in events)
    assert [e["event_id"].rsplit(":", 1)[1] for e in events] == ["0", "1", "2"]
    assert metrics_server.requests == 2


def test_the_command_with_once_fails_when_a_scrape_failed(
    metrics_server: MetricsServer, capsys: pytest.CaptureFixture[str],
) -> None:
    metrics_server.serve(VLLM_TEXT, (503, "loading"))
    assert main(["bridge", "prometheus", "--url", metrics_server.url, "--interval", "0.1",
                 "--once", "--print"]) == 1
    assert capsys.readouterr().out == ""


def test_the_command_explains_a_missing_model_for_tgi(
    metrics_server: MetricsServer, capsys: pytest.CaptureFixture[str],
) -> None:
    metrics_server.serve(tgi_page(1, 0, 10, 2))
    assert main(["bridge", "prometheus", "--url", metrics_server.url, "--print"]) == 2
    assert "pass --model" in capsys.readouterr().err


def test_the_command_serves_its_counters_and_stops_cleanly_on_sigterm(
    metrics_server: MetricsServer,
) -> None:
    metrics_server.serve(VLLM_TEXT, grown(prompt=10, success=1), (500, "overloaded"),
                         grown(prompt=10, success=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    own_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "costflux", "bridge", "prometheus", "--url", metrics_server.url,
         "--interval", "0.2", "--print", "--source", "pod-a", "--metrics-port", str(own_port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while metrics_server.requests < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        own = fetch_metrics_page(f"http://127.0.0.1:{own_port}/metrics", 5)
        assert 'costflux_bridge_scrape_errors_total{reason="http_status"} 1.0' in own
        # Scrape 4 answered after the failed one: the fixture's queue is back.
        assert f'costflux_inference_requests_waiting{{model="{MODEL}",source="pod-a"}} 0.0' in own
        assert "# TYPE costflux_inference_requests_running gauge" in own
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0, err
    assert [orjson.loads(line)["input_tokens"] for line in out.splitlines()] == [10]
    assert "bridge stopped: " in err
