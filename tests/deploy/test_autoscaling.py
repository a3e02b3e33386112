"""deploy/kubernetes/hpa.yaml: the workers scale on the lag of the topic they consume."""

from __future__ import annotations

import re
from typing import Any

from tests.deploy.manifests import STRIMZI, k8s_object, seed_yaml_blocks
from tests.deploy.worker_wiring import deployment_settings, worker_wiring


def _hpa() -> dict[str, Any]:
    # The seed's name; hpa-inference.yaml's HPA scales the inference servers.
    return k8s_object("HorizontalPodAutoscaler", "llm-cost-aware-hpa")


def _lag_metric() -> dict[str, Any]:
    (metric,) = _hpa()["spec"]["metrics"]
    assert metric["type"] == "External"
    return metric["external"]  # type: ignore[no-any-return]


def test_hpa_scales_the_worker_deployment() -> None:
    deployment = k8s_object("Deployment", "llm-cost-tracker")
    target = _hpa()["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    # A replicas field would reset the HPA's count on every `kubectl apply`.
    assert "replicas" not in deployment["spec"]


def test_hpa_watches_the_lag_of_the_usage_topics_hot_path() -> None:
    settings = deployment_settings()
    external = _lag_metric()
    assert external["metric"]["name"] == "kafka_consumergroup_lag"
    assert external["metric"]["selector"]["matchLabels"] == {
        "consumergroup": worker_wiring(settings).ingest_group,
        "topic": settings.topic_usage,
    }
    assert external["target"]["type"] == "AverageValue"  # lag per worker
    assert int(external["target"]["averageValue"]) > 0


def test_the_kafka_exporter_exports_the_lag_the_hpa_reads() -> None:
    labels = _lag_metric()["metric"]["selector"]["matchLabels"]
    exporter = k8s_object("Kafka", None, STRIMZI)["spec"]["kafkaExporter"]
    assert re.fullmatch(exporter["groupRegex"], labels["consumergroup"])
    assert re.fullmatch(exporter["topicRegex"], labels["topic"])


def test_hpa_stops_at_the_partition_count() -> None:
    """Workers beyond the topic's partitions get none and idle; at least two stay up."""
    spec = _hpa()["spec"]
    settings = deployment_settings()
    partitions = worker_wiring(settings).topics[settings.topic_usage]
    assert 2 <= spec["minReplicas"] < spec["maxReplicas"] == partitions


def test_hpa_keeps_the_seeds_scaling_behaviour() -> None:
    (seed,) = [doc for doc in seed_yaml_blocks() if doc["kind"] == "HorizontalPodAutoscaler"]
    hpa = _hpa()
    assert hpa["metadata"]["name"] == seed["metadata"]["name"]
    assert hpa["apiVersion"] == seed["apiVersion"]
    assert hpa["spec"]["behavior"] == seed["spec"]["behavior"]
