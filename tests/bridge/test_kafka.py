"""The bridge against a local /metrics server and the embedded broker: what the counters grew
by arrives on the usage topic, exactly, through a failed scrape, an outage and a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from costflux.cli.bridge import LABELS_ENV
from costflux.core.events import Rejected, decode_usage_message
from costflux.schemas.usage import UsageEvent
from costflux.settings import Settings
from costflux.streams.bridge import PrometheusBridge, send_to_kafka
from costflux.streams.kafka import ensure_topics, producer_config
from costflux.streams.producer import UsageProducer
from tests.bridge.pages import FIXTURE_VALUES, MODEL, VLLM_TEXT, MetricsServer, grown, vllm_page
from tests.bridge.test_scrape import options
from tests.integration.test_producer import read_all
from tests.paths import REPO

pytestmark = pytest.mark.integration


def events_on(settings: Settings, partitions: int, messages: int) -> list[UsageEvent]:
    """Every event on the usage topic, decoded by the pipeline's own decoder."""
    received = read_all(str(settings.kafka_bootstrap), settings.topic_usage, partitions, messages)
    decoded: list[Any] = [
        entry for message in received for entry in decode_usage_message(message.value)[0]
    ]
    assert not [entry for entry in decoded if isinstance(entry, Rejected)]
    return decoded


def sums(events: list[UsageEvent]) -> tuple[int, int, int, int]:
    return (len(events), sum(e.input_tokens for e in events),
            sum(e.output_tokens for e in events), sum(e.cached_input_tokens for e in events))


def test_counter_growth_arrives_exactly_through_failures_and_a_restart(
    settings_for: Callable[..., Settings], metrics_server: MetricsServer,
) -> None:
    settings = settings_for(topic_partitions=2)
    ensure_topics(settings, {settings.topic_usage: 2})
    with UsageProducer(producer_config(settings), settings.topic_usage) as producer:
        bridge = PrometheusBridge(
            options(metrics_server.url, "--deployment", "vllm-opt", "--label", "team=search",
                    "--source", "pod-a", "--timeout", "1"),
            send_to_kafka(producer),
        )
        metrics_server.serve(
            VLLM_TEXT,  # baseline
            grown(prompt=1000, generation=300, success=4, cached=200),  # 4 finished
            grown(prompt=1100, generation=330, success=4, cached=200),  # running: carried
            (500, "Internal Server Error"),
        )
        scraped = [bridge.scrape() for _ in range(4)]
        metrics_server.stop()
        scraped.append(bridge.scrape())  # connection refused
        metrics_server.start()
        metrics_server.serve(
            grown(prompt=1500, generation=400, success=7, cached=260),  # covers the gap
            vllm_page(prompt=40, generation=10, success=1, hits=0, cached=0,
                      start=FIXTURE_VALUES["start"] + 600),  # restarted since
        )
        scraped += [bridge.scrape(), bridge.scrape()]

    assert [o is None for o in scraped] == [False, False, False, True, True, False, False]
    status = bridge.status
    assert (status.scrapes, status.scrape_errors, status.counter_resets) == (5, 2, 1)
    assert (status.events_sent, status.events_unsent) == (8, 0)

    events = events_on(settings, 2, messages=3)  # one message per scrape with events
    assert sums(events) == (8, 1000 + 500 + 40, 300 + 100 + 10, 200 + 60 + 0)
    assert len({e.event_id for e in events}) == 8
    by_scrape: dict[int, list[UsageEvent]] = {}
    for event in events:
        by_scrape.setdefault(event.ts_ms, []).append(event)
    assert [sums(group) for _, group in sorted(by_scrape.items())] == [
        (4, 1000, 300, 200), (3, 500, 100, 60), (1, 40, 10, 0)]
    assert all(e.model == MODEL and e.deployment == "vllm-opt" and e.labels == {"team": "search"}
               for e in events)
    assert all(e.event_id == f"bridge:pod-a:{MODEL}:{e.ts_ms}:{e.event_id.rsplit(':', 1)[1]}"
               for e in events)


def test_the_command_publishes_one_interval_to_the_usage_topic(
    settings_for: Callable[..., Settings], metrics_server: MetricsServer,
) -> None:
    settings = settings_for(topic_partitions=1)
    metrics_server.serve(VLLM_TEXT, grown(prompt=64, generation=21, success=2, cached=16))
    env = {k: v for k, v in os.environ.items() if not k.startswith("COSTFLUX_")}
    env.update({"COSTFLUX_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
                "COSTFLUX_TOPIC_USAGE": settings.topic_usage, "COSTFLUX_TOPIC_PARTITIONS": "1",
                LABELS_ENV: "namespace=ml-prod,team=infra"})
    done = subprocess.run(
        [sys.executable, "-m", "costflux", "bridge", "prometheus", "--url", metrics_server.url,
         "--interval", "0.3", "--once", "--model", "llama-2-7b", "--label", "team=search"],
        cwd=REPO, env=env, timeout=120, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    events = events_on(settings, 1, messages=1)
    assert sums(events) == (2, 64, 21, 16)
    assert {e.model for e in events} == {"llama-2-7b"}
    assert all(e.labels == {"namespace": "ml-prod", "team": "search"} for e in events)
