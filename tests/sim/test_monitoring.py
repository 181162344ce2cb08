"""The simulation's Prometheus: the operator chart's monitors scrape hand-made pods with the
labels prometheus-operator and Kubernetes discovery would give them, the chart's rules load,
and the server follows the API and stops with the controller.

Real parts: the Debian prometheus server, the emulator, the chart rendered by Helm, exporter
processes on their own 127.x addresses reading a real Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterkit import FakePod, Tenant, apply_monitoring, operator_chart_objects, prometheus_processes

from facepipe.operator.kube import SERVICE, KubeApi
from facepipe.sim.emulator import EmulatorServer, write_kubeconfig
from facepipe.sim.kubeutil import POD, SERVICE_MONITOR
from facepipe.sim.monitoring import Monitoring, MonitoringOptions, start_monitoring

TENANT_NS = "tenant-acme"


@pytest.fixture(scope="module")
def cluster(
    kube_emulator: EmulatorServer, kube: KubeApi, tmp_path_factory: pytest.TempPathFactory, redis_server: Any
) -> Iterator[dict[str, Any]]:
    """The chart's monitors, an ops-api pod and Service, a detector pod, an unrelated pod."""
    apply_monitoring(kube, operator_chart_objects())
    tenant = Tenant(TENANT_NS, redis_server.url)
    kube.request("POST", SERVICE.path(TENANT_NS), body=tenant.build("ops_api_service"))
    streams = list(tenant.streams.values())
    common = {"redis_url": redis_server.url, "group": tenant.group, "streams": streams}
    pods = [
        FakePod(kube, TENANT_NS, "acme-ops-api-0", tenant.pod_labels("ops-api"), **common),
        FakePod(
            kube,
            TENANT_NS,
            "acme-detector-0",
            tenant.pod_labels("detector"),
            port_name="metrics",
            port=9100,
            **common,
        ),
        FakePod(kube, TENANT_NS, "stranger", {"app": "stranger"}, port_name="metrics", port=9100, **common),
    ]
    workdir = tmp_path_factory.mktemp("prometheus")
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", kube_emulator.url)
    options = MonitoringOptions(scrape_interval=1, evaluation_interval=1, sync_interval=0.5)
    monitoring = start_monitoring(kubeconfig, workdir / "prom", options)
    yield {"monitoring": monitoring, "tenant": tenant, "pods": pods, "redis_url": redis_server.url}
    monitoring.stop()
    for pod in pods:
        pod.stop()


def series(monitoring: Monitoring, expr: str) -> list[dict[str, str]]:
    return [
        s["metric"]
        for s in monitoring.prometheus.wait_for(
            lambda: monitoring.prometheus.query(expr), timeout=90, what=expr
        )
    ]


def test_service_monitor_series_carry_the_cluster_labels(cluster: dict[str, Any]) -> None:
    found = series(cluster["monitoring"], 'facepipe_stream_lag{stream="face-processing-queue:detected"}')
    assert found == [
        {
            "__name__": "facepipe_stream_lag",
            "namespace": TENANT_NS,
            "pod": "acme-ops-api-0",
            "service": "acme-ops-api",
            "container": "ops-api",
            "endpoint": "http",
            "job": "acme-ops-api",
            "instance": f"{cluster['pods'][0].address}:8001",
            "tenant": "acme",
            "component": "ops-api",
            "stream": "face-processing-queue:detected",
            "group": "pipeline",
            "stream_role": "detected",  # the chart's metricRelabelings
        }
    ]
    roles = {s["stream"]: s["stream_role"] for s in series(cluster["monitoring"], "facepipe_stream_length")}
    assert roles == {
        "face-processing-queue": "ingest",
        "face-processing-queue:detected": "detected",
        "face-processing-queue:embedded": "embedded",
    }


def test_pod_monitor_scrapes_only_the_workers(cluster: dict[str, Any]) -> None:
    up = series(cluster["monitoring"], 'up{job="monitoring/fpo-face-pipeline-operator-workers"}')
    assert len(up) == 1
    assert {k: up[0][k] for k in ("namespace", "pod", "container", "endpoint", "tenant", "component")} == {
        "namespace": TENANT_NS,
        "pod": "acme-detector-0",
        "container": "detector",
        "endpoint": "metrics",
        "tenant": "acme",
        "component": "detector",
    }
    targets = cluster["monitoring"].prometheus.targets()
    active = {t["labels"].get("pod") for t in targets["activeTargets"]}
    assert "stranger" not in active  # discovered, dropped by the PodMonitor's selector
    dropped = [t["discoveredLabels"].get("__meta_kubernetes_pod_name") for t in targets["droppedTargets"]]
    assert "stranger" in dropped


def test_the_chart_rules_load_and_evaluate(cluster: dict[str, Any]) -> None:
    prometheus = cluster["monitoring"].prometheus

    def evaluated() -> list[dict[str, Any]]:
        rules = [rule for group in prometheus.rule_groups() for rule in group["rules"]]
        done = rules and all(
            r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules
        )
        return rules if done else []

    rules = prometheus.wait_for(evaluated, timeout=60, what="every alert rule to evaluate")
    assert {rule["name"] for rule in rules} >= {
        "HighDLQRate",
        "QueueBacklog",
        "StageNoConsumers",
        "DependencyNotReady",
    }


def test_targets_follow_the_pods_and_monitors(cluster: dict[str, Any], kube: KubeApi) -> None:
    monitoring, tenant = cluster["monitoring"], cluster["tenant"]
    labels = tenant.pod_labels("embedder")
    common = {"redis_url": cluster["redis_url"], "group": tenant.group, "streams": []}
    embedder = FakePod(kube, TENANT_NS, "acme-embedder-0", labels, port_name="metrics", port=9100, **common)
    try:
        series(monitoring, 'up{pod="acme-embedder-0", component="embedder"} == 1')
    finally:
        embedder.stop()
    monitoring.prometheus.wait_for(
        lambda: all(
            t["labels"].get("pod") != "acme-embedder-0"
            for t in monitoring.prometheus.targets()["activeTargets"]
        ),
        timeout=60,
        what="the deleted pod's target to go",
    )


def test_a_monitor_it_cannot_honour_is_reported_not_scraped(cluster: dict[str, Any], kube: KubeApi) -> None:
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "tls", "namespace": TENANT_NS},
        "spec": {"selector": {}, "endpoints": [{"port": "http", "scheme": "https", "tlsConfig": {"ca": {}}}]},
    }
    kube.request("POST", SERVICE_MONITOR.path(TENANT_NS), body=monitor)
    try:
        monitoring = cluster["monitoring"]
        problem = monitoring.prometheus.wait_for(
            lambda: monitoring.problems.get(f"ServiceMonitor/{TENANT_NS}/tls"), timeout=30, what="the problem"
        )
        assert "tlsConfig" in problem
        assert f"serviceMonitor/{TENANT_NS}/tls/0" not in monitoring.sync_once().jobs
    finally:
        kube.delete(SERVICE_MONITOR, TENANT_NS, "tls")


def test_prometheus_stops_with_the_controller(kube_emulator: EmulatorServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_emulator.url)
    before = {p.pid for p in prometheus_processes()}
    with start_monitoring(kubeconfig, tmp_path / "prom", MonitoringOptions(sync_interval=0.5)) as monitoring:
        assert monitoring.prometheus.running()
        started = {p.pid for p in prometheus_processes()} - before
        assert len(started) == 1
    assert not ({p.pid for p in prometheus_processes()} & started)


def test_pods_are_listed_by_discovery_even_without_endpoints_objects(
    kube: KubeApi, cluster: dict[str, Any]
) -> None:
    """No endpoints controller here: the ServiceMonitor's targets come from the Service's selector."""
    assert kube.list(POD, TENANT_NS)
    targets = cluster["monitoring"].prometheus.targets()["activeTargets"]
    assert any(t["labels"].get("service") == "acme-ops-api" for t in targets)
