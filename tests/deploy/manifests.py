"""The deployment files as data: paths, YAML documents, Kubernetes objects, compose services.

Shared by tests/test_deploy.py and the tests in this package. Everything is read from the
repository; nothing here touches the network.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
STRIMZI = K8S / "strimzi"
GRAFANA = DEPLOY / "grafana"
DASHBOARD_FILE = K8S / "dashboards" / "costflux.json"
COMPOSE_FILE = ROOT / "docker-compose.yml"
RULES_FILE = DEPLOY / "prometheus" / "rules.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
#: The seed documents, copied into the repository (tests/fixtures/seeds/SOURCE.txt).
SEEDS = ROOT / "tests" / "fixtures" / "seeds"


def docs(path: Path) -> list[Any]:
    """Every non-empty YAML document in ``path``."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def k8s_objects(directory: Path = K8S) -> Iterator[tuple[Path, dict[str, Any]]]:
    """(file, object) for every Kubernetes object in ``directory``'s own *.yaml files."""
    for path in sorted(directory.glob("*.yaml")):
        for doc in docs(path):
            if "apiVersion" in doc and doc.get("kind") != "Kustomization":
                yield path, doc


def k8s_object(kind: str, name: str | None = None, directory: Path = K8S) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``) in ``directory``."""
    found = [
        doc
        for _, doc in k8s_objects(directory)
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's literal env values (variables from Secrets are left out)."""
    return {var["name"]: var["value"] for var in container.get("env", []) if "value" in var}


def compose() -> dict[str, Any]:
    (doc,) = docs(COMPOSE_FILE)
    return doc  # type: ignore[no-any-return]


def costflux_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the costflux image."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if "build" in service or str(service.get("image", "")).startswith("costflux")
    }


def compose_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: container path -> resolved path in the repository."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = (ROOT / source).resolve()
    return mounts


def seed_yaml_blocks() -> list[dict[str, Any]]:
    """Every YAML document in the seeds' ```yaml blocks."""
    blocks = []
    for seed in sorted(SEEDS.glob("*.txt")):
        for block in re.findall(r"```yaml\n(.*?)```", seed.read_text(encoding="utf-8"), re.S):
            blocks.extend(doc for doc in yaml.safe_load_all(block) if doc is not None)
    return blocks


def load_script(path: Path) -> ModuleType:
    """Import one of deploy/'s scripts (not a package) as a module, to test its functions."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
