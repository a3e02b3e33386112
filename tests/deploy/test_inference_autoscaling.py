"""deploy/kubernetes/hpa-inference.yaml: the inference servers scale on their request queue.

The chain is checked link by link, offline: the HPA is the seed's; the metric it reads is
served by a prometheus-adapter rule (deploy/kubernetes/prometheus-adapter/) whose series is the
gauge the bridge registers, with the labels the HPA selects on; the rule's query, rendered as
the adapter renders it, sums the pods' queues in promtool (a pod whose bridge lost its server
drops out); the bridge sidecar in the file's comment parses with the CLI and serves the port the
PodMonitor scrapes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from costflux.streams.bridge import QUEUE_LABELS, BridgeMetrics
from tests.deploy.manifests import K8S, docs, k8s_object, k8s_objects, seed_yaml_blocks
from tests.prometheus_tools import run_promtool

HPA_FILE = K8S / "hpa-inference.yaml"
ADAPTER_FILE = K8S / "prometheus-adapter" / "configmap.yaml"
QUEUE_GAUGE = "costflux_inference_requests_waiting"


def _hpa() -> dict[str, Any]:
    return k8s_object("HorizontalPodAutoscaler", "vllm-inference")


def _external_metric() -> dict[str, Any]:
    (metric,) = _hpa()["spec"]["metrics"]
    assert metric["type"] == "External"
    return metric["external"]  # type: ignore[no-any-return]


def _adapter_rules() -> list[dict[str, Any]]:
    (configmap,) = docs(ADAPTER_FILE)
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    return config["externalRules"]  # type: ignore[no-any-return]


def _series_name(rule: dict[str, Any]) -> str:
    found = re.fullmatch(r"(\w+)\{.*\}", rule["seriesQuery"])
    assert found, rule["seriesQuery"]
    return found.group(1)


def _api_name(rule: dict[str, Any]) -> str:
    """The external metric name the adapter serves for a rule (its `name`, else the series')."""
    series = _series_name(rule)
    naming = rule.get("name", {})
    matched = re.search(naming.get("matches", ".*"), series)
    assert matched, (naming, series)
    return matched.expand(naming.get("as", "$0").replace("$0", r"\g<0>"))


def _rule_for(metric_name: str) -> dict[str, Any]:
    (rule,) = [rule for rule in _adapter_rules() if _api_name(rule) == metric_name]
    return rule


def _bridge_metric_names() -> set[str]:
    registry = CollectorRegistry()
    BridgeMetrics(registry)
    return {family.name for family in registry.collect()}


# --- the HPA ----------------------------------------------------------------------------------


def test_the_hpa_is_the_seeds_on_the_inference_deployment() -> None:
    (seed,) = [doc for doc in seed_yaml_blocks() if doc["kind"] == "HorizontalPodAutoscaler"]
    hpa = _hpa()
    assert hpa["apiVersion"] == seed["apiVersion"] == "autoscaling/v2"
    # Everything in the spec is the seed's (Deployment vllm-inference, 1 to 10 replicas, an
    # External request_queue_length averaging 5 per replica, the behaviour), but the selector
    # that picks the model's series.
    spec = yaml.safe_load(yaml.safe_dump(hpa["spec"]))
    selector = spec["metrics"][0]["external"]["metric"].pop("selector")
    assert spec == seed["spec"]
    assert set(selector) == {"matchLabels"} and selector["matchLabels"]


def test_the_hpa_selects_on_labels_the_bridge_gauge_has() -> None:
    labels = _external_metric()["metric"]["selector"]["matchLabels"]
    assert set(labels) <= set(QUEUE_LABELS)
    # A Kubernetes label value: a model name with "/" cannot be selected (the bridge's --model).
    assert all(re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value)
               for value in labels.values())


def test_the_seeds_hpa_name_stays_with_the_workers_and_each_hpa_has_its_own_target() -> None:
    hpas = [doc for _, doc in k8s_objects() if doc["kind"] == "HorizontalPodAutoscaler"]
    targets = [hpa["spec"]["scaleTargetRef"]["name"] for hpa in hpas]
    assert len(set(targets)) == len(hpas) == 2, "two HPAs on one Deployment fight"
    assert {hpa["metadata"]["name"] for hpa in hpas} == {"llm-cost-aware-hpa", "vllm-inference"}


# --- prometheus-adapter -----------------------------------------------------------------------


def test_every_external_metric_of_every_hpa_has_one_adapter_rule() -> None:
    for _, hpa in k8s_objects():
        if hpa["kind"] != "HorizontalPodAutoscaler":
            continue
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "External":
                _rule_for(metric["external"]["metric"]["name"])  # exactly one
    names = [_api_name(rule) for rule in _adapter_rules()]
    assert len(names) == len(set(names))


def test_the_queue_metric_is_the_bridges_gauge_in_the_hpas_namespace() -> None:
    rule = _rule_for(_external_metric()["metric"]["name"])
    assert _series_name(rule) == QUEUE_GAUGE
    assert QUEUE_GAUGE in _bridge_metric_names()
    # Namespaced: the HPA reads the queues of its own namespace's pods only.
    assert rule["resources"] == {"overrides": {"namespace": {"resource": "namespace"}}}
    assert "namespaced" not in rule["resources"]
    for label in _external_metric()["metric"]["selector"]["matchLabels"]:
        assert f"{label}!=" in rule["seriesQuery"], label


def test_the_lag_rule_is_not_namespaced() -> None:
    (metric,) = k8s_object("HorizontalPodAutoscaler", "llm-cost-aware-hpa")["spec"]["metrics"]
    rule = _rule_for(metric["external"]["metric"]["name"])
    # kafka-exporter runs in Kafka's namespace, not the workers'.
    assert rule["resources"] == {"namespaced": False}


def test_the_adapter_configmap_matches_the_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate to check API schemas"
    )
    (configmap,) = docs(ADAPTER_FILE)
    for version in ("1.25.0", "1.32.0"):
        kubernetes_validate.validate(configmap, version, strict=True)


def _render(rule: dict[str, Any], matchers: dict[str, str]) -> str:
    """The rule's metricsQuery as the adapter renders it for one external metric request."""
    label_matchers = ",".join(f'{name}="{value}"' for name, value in matchers.items())
    query: str = rule["metricsQuery"]
    return (query.replace("<<.Series>>", _series_name(rule))
            .replace("<<.LabelMatchers>>", label_matchers).replace("<<.GroupBy>>", ""))


def test_the_adapter_query_sums_the_queues_of_the_hpas_pods(tmp_path: Path) -> None:
    """Two pods of the model in the HPA's namespace; one's bridge loses its vLLM at 5m."""
    external = _external_metric()
    model = external["metric"]["selector"]["matchLabels"]["model"]
    query = _render(_rule_for(external["metric"]["name"]),
                    {**external["metric"]["selector"]["matchLabels"], "namespace": "ml"})
    rules = tmp_path / "adapter_query.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [
        {"record": "request_queue_length", "expr": query}]}]}), encoding="utf-8")
    assert "SUCCESS" in run_promtool("check", "rules", str(rules))

    def series(namespace: str, pod: str, model_name: str = model) -> str:
        return (f'{QUEUE_GAUGE}{{model="{model_name}",namespace="{namespace}",pod="{pod}",'
                f'source="{pod}/127.0.0.1:8000"}}')

    tests = tmp_path / "adapter_query_test.yml"
    tests.write_text(yaml.safe_dump({
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                {"series": series("ml", "vllm-a"), "values": "4x10"},
                # The bridge drops the series when a scrape fails: Prometheus marks it stale.
                {"series": series("ml", "vllm-b"), "values": "8x4 stale"},
                {"series": series("ml", "other-a", "llama-2-70b"), "values": "100x10"},
                {"series": series("elsewhere", "vllm-c"), "values": "100x10"},
            ],
            "promql_expr_test": [
                {"expr": "request_queue_length", "eval_time": "3m",
                 "exp_samples": [{"labels": "request_queue_length", "value": 12}]},
                {"expr": "request_queue_length", "eval_time": "6m",
                 "exp_samples": [{"labels": "request_queue_length", "value": 4}]},
            ],
        }],
    }), encoding="utf-8")
    run_promtool("test", "rules", str(tests))


# --- the bridge sidecar and its PodMonitor ----------------------------------------------------


def _sidecar_in_comment() -> dict[str, Any]:
    """The bridge container the HPA file's comment tells to add to the vLLM pod."""
    lines = HPA_FILE.read_text(encoding="utf-8").splitlines()
    start = lines.index("#     - name: costflux-bridge")
    block = []
    for line in lines[start:]:
        if not line.startswith("#     "):
            break
        block.append(line[len("#     "):])
    (container,) = yaml.safe_load("\n".join(block))
    return container  # type: ignore[no-any-return]


def test_the_sidecar_in_the_comment_serves_the_port_the_podmonitor_scrapes() -> None:
    from costflux.cli import _parser

    container = _sidecar_in_comment()
    args = _parser().parse_args(container["args"])
    assert container["args"][:2] == ["bridge", "prometheus"]
    assert args.url.startswith("http://127.0.0.1:")  # its own pod's vLLM, not a Service
    (port,) = container["ports"]
    assert port["containerPort"] == args.metrics_port
    monitor = k8s_object("PodMonitor", "vllm-inference-bridge")
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == [port["name"]]
    assert args.deployment == _hpa()["spec"]["scaleTargetRef"]["name"]
    # The PodMonitor selects the scaled Deployment's pods (labelled as the HPA is).
    assert monitor["spec"]["selector"]["matchLabels"] == _hpa()["metadata"]["labels"]
