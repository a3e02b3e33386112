"""deploy/kubernetes/semantic-cache.yaml carries the seed's semantic-cache settings into
``costflux cache`` and wires it to Redis and the broker."""

from __future__ import annotations

from costflux.cli import _parser
from costflux.cli.cache import _cache_settings
from tests.deploy.manifests import K8S, docs, seed_yaml_blocks


def test_the_manifest_is_the_seeds_semantic_cache_with_costflux_settings() -> None:
    (seed,) = [d for d in seed_yaml_blocks() if d["kind"] == "Deployment"
               and d["metadata"]["name"] == "semantic-cache"]
    (seed_container,) = seed["spec"]["template"]["spec"]["containers"]
    seed_env = {var["name"]: var["value"] for var in seed_container["env"]}

    deployment, service = docs(K8S / "semantic-cache.yaml")
    assert deployment["metadata"]["name"] == "semantic-cache"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    settings = _cache_settings(_parser().parse_args(container["args"]))
    assert settings.similarity_threshold == float(seed_env["SIMILARITY_THRESHOLD"])
    assert settings.max_entries == int(seed_env["MAX_CACHE_SIZE"])
    assert seed_env["EMBEDDING_MODEL"] == "sentence-transformers/all-MiniLM-L6-v2"  # built in
    env = {var["name"]: var for var in container["env"]}
    assert seed_env["CACHE_BACKEND"] == "redis"
    assert env["COSTFLUX_REDIS_URL"]["value"] == seed_env["REDIS_URL"] + "/0"
    assert "secretKeyRef" in env["COSTFLUX_REDIS_PASSWORD"]["valueFrom"]
    assert {"containerPort": 8080, "name": "http"} in container["ports"]
    assert [p["containerPort"] for p in seed_container["ports"]] == [8080]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
