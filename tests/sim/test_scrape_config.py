"""prometheus-operator's translation and Kubernetes discovery, without a Prometheus: the parts
whose output is plain data (the end-to-end behaviour is in test_monitoring.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from facepipe.sim.scrape_config import (
    ScrapeOptions,
    UnsupportedMonitor,
    convert_relabelings,
    monitor_jobs,
    namespaces_for,
    rule_file,
)
from facepipe.sim.scrape_targets import derive_endpoints, endpoints_role_targets, pod_role_targets


def pod(
    name: str, ip: str | None, labels: dict[str, str], *, ready: bool = True, phase: str = "Running"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels, "uid": f"uid-{name}"},
        "spec": {
            "containers": [
                {"name": "api", "image": "img", "ports": [{"name": "http", "containerPort": 8001}]}
            ]
        },
        "status": {
            "phase": phase,
            **({"podIP": ip} if ip else {}),
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


@pytest.mark.parametrize(
    ("selector", "expected"),
    [({"any": True}, None), ({"matchNames": ["a", "b"]}, ["a", "b"]), ({}, ["home"])],
)
def test_namespace_selector(selector: dict[str, Any], expected: list[str] | None) -> None:
    monitor = {"metadata": {"name": "m", "namespace": "home"}, "spec": {"namespaceSelector": selector}}
    assert namespaces_for(monitor) == expected


def test_relabelings_are_converted_and_unknown_fields_refused() -> None:
    converted = convert_relabelings(
        [{"sourceLabels": ["a"], "targetLabel": "b", "action": "Replace", "regex": "(.+)"}]
    )
    assert converted == [{"source_labels": ["a"], "target_label": "b", "action": "replace", "regex": "(.+)"}]
    with pytest.raises(UnsupportedMonitor, match="sourceLabel"):
        convert_relabelings([{"sourceLabel": ["a"]}])


def test_pod_monitor_job_as_prometheus_operator_writes_it(tmp_path: Path) -> None:
    monitor = {
        "kind": "PodMonitor",
        "metadata": {"name": "workers", "namespace": "mon"},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/component": "detector"}},
            "podMetricsEndpoints": [{"port": "metrics", "interval": "30s", "scrapeTimeout": "10s"}],
        },
    }
    [job] = monitor_jobs(monitor, tmp_path, ScrapeOptions(interval=1))
    assert job.name == "podMonitor/mon/workers/0"
    assert (job.role, job.namespaces) == ("pod", ["mon"])
    assert (job.config["scrape_interval"], job.config["scrape_timeout"]) == ("1s", "1s")
    rules = job.config["relabel_configs"]
    assert rules[0] == {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}
    assert {
        "action": "keep",
        "source_labels": [
            "__meta_kubernetes_pod_label_app_kubernetes_io_component",
            "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_component",
        ],
        "regex": "(detector);true",
    } in rules
    assert {"target_label": "job", "replacement": "mon/workers"} in rules
    assert rules[-1] == {"target_label": "endpoint", "replacement": "metrics"}


def test_tls_is_refused(tmp_path: Path) -> None:
    monitor = {
        "kind": "ServiceMonitor",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"endpoints": [{"port": "https", "tlsConfig": {"insecureSkipVerify": True}}]},
    }
    with pytest.raises(UnsupportedMonitor, match="tlsConfig"):
        monitor_jobs(monitor, tmp_path, ScrapeOptions())


def test_rule_file_name_and_for_cap() -> None:
    rule = {
        "metadata": {"name": "alerts", "namespace": "mon", "uid": "u1"},
        "spec": {
            "groups": [
                {
                    "name": "g",
                    "rules": [{"alert": "A", "expr": "up", "for": "10m"}, {"record": "r", "expr": "up"}],
                }
            ]
        },
    }
    name, content = rule_file(rule, max_for=5)
    assert name == "mon-alerts-u1"
    assert content["groups"][0]["rules"][0]["for"] == "5s"
    assert rule_file(rule)[1]["groups"][0]["rules"][0]["for"] == "10m"


def test_pod_role_targets_carry_the_discovery_labels() -> None:
    [target] = pod_role_targets(
        [pod("a", "127.1.2.3", {"app.kubernetes.io/component": "x"}), pod("b", None, {})]
    )
    assert target["__address__"] == "127.1.2.3:8001"
    assert target["__meta_kubernetes_pod_label_app_kubernetes_io_component"] == "x"
    assert target["__meta_kubernetes_pod_container_port_name"] == "http"
    assert target["__meta_kubernetes_pod_ready"] == "true"


def test_endpoints_derived_from_the_service_selector() -> None:
    service = {
        "metadata": {"name": "api", "namespace": "ns", "labels": {"tier": "web"}},
        "spec": {"selector": {"app": "api"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
    }
    pods = [
        pod("ready", "127.0.0.5", {"app": "api"}),
        pod("starting", "127.0.0.6", {"app": "api"}, ready=False),
        pod("done", "127.0.0.7", {"app": "api"}, phase="Succeeded"),
        pod("other", "127.0.0.8", {"app": "db"}),
    ]
    endpoints = derive_endpoints(service, pods)
    assert endpoints is not None
    by_name = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    targets = endpoints_role_targets(endpoints, service, by_name)
    assert {(t["__address__"], t["__meta_kubernetes_endpoint_ready"]) for t in targets} == {
        ("127.0.0.5:8001", "true"),  # targetPort "http" resolved to the container port
        ("127.0.0.6:8001", "false"),
    }
    assert {t["__meta_kubernetes_service_label_tier"] for t in targets} == {"web"}
    assert {t["__meta_kubernetes_endpoint_port_name"] for t in targets} == {"web"}
    assert {t["__meta_kubernetes_pod_container_name"] for t in targets} == {"api"}
    assert derive_endpoints({"metadata": {"name": "x", "namespace": "ns"}, "spec": {}}, pods) is None
