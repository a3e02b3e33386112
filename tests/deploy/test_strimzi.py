"""deploy/kubernetes/strimzi: valid Strimzi objects, and the Kafka the workers expect.

The objects are checked against Strimzi's own CRD schemas (vendored, see
tests/fixtures/strimzi_crds/SOURCE.txt), then against the code: the topics and partition counts
are the ones ``build_worker`` creates, the bootstrap address and security are the Deployment's,
the user's ACLs cover every topic and consumer group a worker uses.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

import pytest

from costflux.agents.app import ticks_topic
from tests.deploy.manifests import (
    STRIMZI,
    compose,
    container_env,
    docs,
    k8s_object,
    k8s_objects,
)
from tests.deploy.strimzi_schema import (
    CRDS,
    declared_shape,
    node,
    schema_errors,
    strimzi_crd_sources,
    unknown_fields,
)
from tests.deploy.worker_wiring import deployment_settings, worker_wiring

STRIMZI_KINDS = {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}

needs_node = pytest.mark.skipif(
    node() is None, reason="Node.js runs the vendored Strimzi validators (apt-get install nodejs)"
)


def _objects() -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_objects(STRIMZI)]


def _strimzi(kind: str, name: str | None = None) -> dict[str, Any]:
    return k8s_object(kind, name, STRIMZI)


def _topics() -> dict[str, dict[str, Any]]:
    topics = [doc for doc in _objects() if doc["kind"] == "KafkaTopic"]
    return {topic["spec"].get("topicName", topic["metadata"]["name"]): topic for topic in topics}


def _worker_env() -> dict[str, str]:
    deployment = k8s_object("Deployment", "llm-cost-tracker")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container_env(container)


# --- the schemas ----------------------------------------------------------------------------------


def test_vendored_schema_files_are_unchanged() -> None:
    listed = re.findall(
        r"^\s+([0-9a-f]{64})  (node_modules/\S+)$",
        (CRDS / "SOURCE.txt").read_text(encoding="utf-8"),
        re.M,
    )
    assert {CRDS / path for _, path in listed} >= set(strimzi_crd_sources())
    for digest, path in listed:
        assert hashlib.sha256((CRDS / path).read_bytes()).hexdigest() == digest, path


def test_every_strimzi_object_is_a_v1beta2_kind_with_a_schema() -> None:
    objects = _objects()
    assert {doc["kind"] for doc in objects} == STRIMZI_KINDS
    assert {doc["apiVersion"] for doc in objects} == {"kafka.strimzi.io/v1beta2"}


@needs_node
def test_strimzi_objects_match_the_strimzi_schemas() -> None:
    errors = schema_errors(_objects())
    assert len(errors) == len(_objects())
    assert {key: found for key, found in errors.items() if found} == {}


@needs_node
def test_the_schemas_reject_what_strimzi_would() -> None:
    """The validators bite: each broken copy of a manifest is refused, and for its fault."""
    kafka, pool = _strimzi("Kafka"), _strimzi("KafkaNodePool")
    topic, user = next(iter(_topics().values())), _strimzi("KafkaUser")
    broken = []
    for original, path, value in [
        (topic, ("spec", "partitions"), 0),
        (topic, ("spec", "replicas"), "3"),
        (kafka, ("spec", "kafka", "listeners", 0, "type"), "loadbalanced"),
        (kafka, ("spec", "kafka", "listeners", 0, "authentication", "type"), "scram"),
        (pool, ("spec", "roles"), ["zookeeper"]),
        (user, ("spec", "authorization", "acls", 0, "operations"), ["Reed"]),
    ]:
        copied = copy.deepcopy(original)
        copied["metadata"]["name"] = f"broken-{len(broken)}"
        target: Any = copied
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        broken.append(copied)
    errors = schema_errors(broken)
    for copied in broken:
        assert errors[(copied["kind"], copied["metadata"]["name"])], copied["metadata"]["name"]


def test_strimzi_objects_use_only_fields_the_schemas_declare() -> None:
    for doc in _objects():
        assert unknown_fields(doc, declared_shape(doc["kind"])) == [], doc["metadata"]["name"]
    # And the check sees a typo: a misspelt field is not silently dropped by the operator.
    kafka = copy.deepcopy(_strimzi("Kafka"))
    kafka["spec"]["kafka"]["listeners"][0]["authentiction"] = {"type": "scram-sha-512"}
    kafka["spec"]["kafkaExporter"]["groupRegexp"] = ".*"
    assert unknown_fields(kafka, declared_shape("Kafka")) == [
        "/spec/kafka/listeners/0/authentiction",
        "/spec/kafkaExporter/groupRegexp",
    ]


def test_strimzi_kustomization_lists_every_manifest() -> None:
    (kustomization,) = docs(STRIMZI / "kustomization.yaml")
    manifests = {path.name for path in STRIMZI.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    assert kustomization["namespace"]


# --- the cluster ----------------------------------------------------------------------------------


def test_the_cluster_runs_kraft_on_a_node_pool() -> None:
    kafka, pool = _strimzi("Kafka"), _strimzi("KafkaNodePool")
    annotations = kafka["metadata"]["annotations"]
    assert annotations["strimzi.io/kraft"] == "enabled"
    assert annotations["strimzi.io/node-pools"] == "enabled"
    assert "zookeeper" not in kafka["spec"]
    assert pool["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    assert pool["spec"]["replicas"] >= 3  # a quorum that survives one node down
    assert {"topicOperator", "userOperator"} <= kafka["spec"]["entityOperator"].keys()


def test_the_cluster_runs_the_kafka_version_compose_runs() -> None:
    image = compose()["services"]["kafka"]["image"]
    assert image.startswith("apache/kafka:")
    version = _strimzi("Kafka")["spec"]["kafka"]["version"]
    assert image.split(":")[1] == version
    assert _strimzi("Kafka")["spec"]["kafka"]["metadataVersion"].startswith(
        ".".join(version.split(".")[:2]) + "-"
    )


def test_workers_reach_the_cluster_as_the_deployment_says() -> None:
    kafka = _strimzi("Kafka")
    (kustomization,) = docs(STRIMZI / "kustomization.yaml")
    env = _worker_env()
    host, port = env["COSTFLUX_KAFKA_BOOTSTRAP"].rsplit(":", 1)
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap.{kustomization['namespace']}.svc"
    listeners = kafka["spec"]["kafka"]["listeners"]
    (listener,) = [found for found in listeners if found["port"] == int(port)]
    assert listener["type"] == "internal"
    protocol = "SASL_SSL" if listener["tls"] else "SASL_PLAINTEXT"
    assert env["COSTFLUX_KAFKA_SECURITY_PROTOCOL"] == protocol
    mechanism = listener["authentication"]["type"]
    assert env["COSTFLUX_KAFKA_SASL_MECHANISM"] == mechanism.upper()
    assert _strimzi("KafkaUser")["spec"]["authentication"]["type"] == mechanism


# --- the topics -----------------------------------------------------------------------------------


def test_topics_are_the_ones_a_worker_creates() -> None:
    wiring = worker_wiring(deployment_settings())
    topics = _topics()
    assert {name: topic["spec"]["partitions"] for name, topic in topics.items()} == wiring.topics
    kafka_name = _strimzi("Kafka")["metadata"]["name"]
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] == kafka_name for t in topics.values())


def test_topics_keep_their_records_as_long_as_the_workers_need_them() -> None:
    settings = deployment_settings()
    brokers = _strimzi("KafkaNodePool")["spec"]["replicas"]
    for name, topic in _topics().items():
        spec, config = topic["spec"], topic["spec"]["config"]
        # Deleted by age, never compacted: compaction keeps one record per key, and these
        # records are events (a rebuild must count every one), not states.
        assert config["cleanup.policy"] == "delete", name
        assert config["retention.ms"] > settings.dedup_horizon_s * 1000, name
        # acks=all writes land on two brokers and go on with one broker down.
        assert 1 < config["min.insync.replicas"] < spec["replicas"] <= brokers, name
    topics = _topics()
    raw = topics[settings.topic_usage]["spec"]["config"]["retention.ms"]
    # How long the raw topics keep events is a choice (it bounds what a worker can rebuild if
    # Redis is lost: a partition Redis holds no offset for is read from the topic's start),
    # with two requirements the product does have. GPU cost is shared by the usage of the
    # same windows, so a rebuild needs both topics over the same span:
    assert raw == topics[settings.topic_gpu]["spec"]["config"]["retention.ms"]
    # and a rebuild must give every window that still takes events whole (the largest window
    # plus the lateness its events may have); else it would show, and go on adding to, a
    # window whose first events are gone.
    assert raw >= (max(settings.window_sizes) + settings.allowed_lateness_s) * 1000


def test_the_detectors_topics() -> None:
    """Its ticks topic is declared, with one partition (one worker evaluates the rules); its
    rule states' changelog is left to Faust, which creates it compacted (declared here with the
    others' delete policy, the states would be deleted with age)."""
    settings = deployment_settings()
    assert _topics()[ticks_topic(settings)]["spec"]["partitions"] == 1
    assert f"{settings.consumer_group}-alert-states-changelog" not in _topics()


def test_the_cluster_leaves_topic_creation_to_the_admin_api() -> None:
    config = _strimzi("Kafka")["spec"]["kafka"]["config"]
    assert config["auto.create.topics.enable"] is False
    # Not broker-wide: Faust creates its changelogs with its own replication factor (1 unless
    # configured), and min.insync.replicas 2 would refuse every acknowledged write to them.
    assert "min.insync.replicas" not in config


# --- the user -------------------------------------------------------------------------------------


def _allowed(resource_type: str, name: str) -> set[str]:
    """The operations the costflux KafkaUser may perform on one topic or group."""
    operations: set[str] = set()
    for acl in _strimzi("KafkaUser")["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        if resource["type"] != resource_type:
            continue
        pattern = resource.get("patternType", "literal")
        if (pattern == "literal" and resource["name"] == name) or (
            pattern == "prefix" and name.startswith(resource["name"])
        ):
            operations.update(acl["operations"])
    return operations


def test_the_user_may_create_read_and_write_every_worker_topic() -> None:
    settings = deployment_settings()
    wiring = worker_wiring(settings)
    # Faust names a table's changelog <app id>-<table>-changelog; the app id is the group.
    faust_changelog = f"{settings.consumer_group}-alert-states-changelog"
    for topic in [*wiring.topics, faust_changelog]:
        allowed = _allowed("topic", topic)
        assert "All" in allowed or {"Describe", "Read", "Write", "Create"} <= allowed, topic


def test_the_user_may_join_every_worker_consumer_group() -> None:
    settings = deployment_settings()
    groups = [settings.consumer_group, worker_wiring(settings).ingest_group]
    for group in groups:
        allowed = _allowed("group", group)
        assert "All" in allowed or "Read" in allowed, group
    assert _allowed("group", "someone-elses-group") == set()
    assert _allowed("topic", "someone.elses.topic") == set()
