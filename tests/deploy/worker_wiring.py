"""What a worker asks of Kafka, read from ``costflux.agents.app.build_worker`` itself.

The manifests that create topics (Strimzi KafkaTopics) and watch consumer lag (the HPA) must
name what the code uses. Rather than a list written by hand, ``worker_wiring`` runs
``build_worker`` with Kafka's two touch points replaced: the topic set up records the topics
(name -> partitions) and the first consumer configuration records the hot path's consumer
group and stops the build there. Nothing connects anywhere.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from unittest import mock

import costflux.agents.app
from costflux.settings import Settings
from tests.deploy.manifests import container_env, k8s_object


@dataclass(frozen=True)
class WorkerWiring:
    topics: dict[str, int]  # every topic a worker creates, with its partition count
    ingest_group: str  # the consumer group reading the usage topic on the hot path


class _Stop(Exception):
    """Raised from the patched consumer configuration to end the build."""


def worker_wiring(settings: Settings) -> WorkerWiring:
    topics: dict[str, int] = {}
    groups: list[str] = []

    def record_topics(_settings: Settings, wanted: dict[str, int], **_: Any) -> list[str]:
        topics.update(wanted)
        return []

    def record_group(_settings: Settings, group_id: str, **_: Any) -> dict[str, Any]:
        groups.append(group_id)
        raise _Stop

    with (
        mock.patch.object(costflux.agents.app, "ensure_topics", record_topics),
        mock.patch.object(costflux.agents.app, "consumer_config", record_group),
        contextlib.suppress(_Stop),
    ):
        costflux.agents.app.build_worker(settings)
    assert topics and groups, "build_worker no longer creates topics before its consumers"
    return WorkerWiring(topics, groups[0])


def deployment_settings() -> Settings:
    """The worker Deployment's Kafka topic and consumer group settings (the rest default)."""
    (container,) = k8s_object("Deployment", "llm-cost-tracker")["spec"]["template"]["spec"][
        "containers"
    ]
    fields = {
        name[len("COSTFLUX_") :].lower(): value
        for name, value in container_env(container).items()
        if name.startswith(("COSTFLUX_TOPIC_", "COSTFLUX_CONSUMER_GROUP"))
    }
    # Plain text and no files: only the names and counts matter here.
    return Settings(kafka_bootstrap="kafka:9092", redis_url="redis://redis:6379/0", **fields)
