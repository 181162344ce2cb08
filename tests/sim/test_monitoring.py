"""The simulation's Prometheus: the operator chart's monitors scrape hand-made pods with the
labels prometheus-operator and Kubernetes discovery would give them, the chart's rules load,
and the server follows the API and stops with the controller.

Real parts: the Debian prometheus server, the emulator, the chart rendered by Helm, exporter
processes on their own 127.x addresses reading a real Redis.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterkit import FakePod, Tenant, apply_monitoring, operator_chart_objects, prometheus_processes

from facepipe.operator.kube import DEPLOYMENT, SERVICE, KubeApi
from facepipe.sim import promcheck
from facepipe.sim.emulator import EmulatorServer, write_kubeconfig
from facepipe.sim.kubeutil import POD, PROMETHEUS_RULE, SERVICE_MONITOR
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
    # Only ops-api exports the stream gauges; the other pods serve an empty /metrics.
    common = {"redis_url": redis_server.url, "group": tenant.group, "streams": []}
    ops_api = {**common, "streams": list(tenant.streams.values())}
    pods = [
        FakePod(kube, TENANT_NS, "acme-ops-api-0", tenant.pod_labels("ops-api"), **ops_api),
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
    streams = cluster["tenant"].streams  # the tenant's own: face-processing-queue:{acme}...
    found = series(cluster["monitoring"], f'facepipe_stream_lag{{stream="{streams["detected"]}"}}')
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
            "stream": streams["detected"],
            "group": "pipeline",
            "stream_role": "detected",  # ops-api's own label, kept by the ServiceMonitor
        }
    ]
    roles = {s["stream"]: s["stream_role"] for s in series(cluster["monitoring"], "facepipe_stream_length")}
    assert roles == {name: role for role, name in streams.items()}


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


def test_an_invalid_rule_is_left_out_and_the_others_load(cluster: dict[str, Any], kube: KubeApi) -> None:
    broken = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "broken", "namespace": TENANT_NS},
        "spec": {"groups": [{"name": "broken", "rules": [{"alert": "Broken", "expr": "sum by (a (up)"}]}]},
    }
    kube.request("POST", PROMETHEUS_RULE.path(TENANT_NS), body=broken)
    try:
        monitoring = cluster["monitoring"]
        problem = monitoring.prometheus.wait_for(
            lambda: monitoring.problems.get(f"PrometheusRule/{TENANT_NS}/broken"),
            timeout=30,
            what="the problem",
        )
        assert "not loaded" in problem and "parse error" in problem
        monitoring.sync_once()
        assert [g["name"] for g in monitoring.prometheus.rule_groups()] == ["facepipe.alerts"]
        assert "Prometheus configuration" not in monitoring.problems
    finally:
        kube.delete(PROMETHEUS_RULE, TENANT_NS, "broken")


def test_prometheus_stops_with_the_controller(kube_emulator: EmulatorServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_emulator.url)
    before = {p.pid for p in prometheus_processes()}
    with start_monitoring(kubeconfig, tmp_path / "a", MonitoringOptions(sync_interval=0.5)) as monitoring:
        assert monitoring.prometheus.running()
        started = {p.pid for p in prometheus_processes()} - before
        assert len(started) == 1
    assert not ({p.pid for p in prometheus_processes()} & started)
    # the cluster simulation's way: one stop event for every controller
    stop = threading.Event()
    monitoring = start_monitoring(kubeconfig, tmp_path / "b", MonitoringOptions(sync_interval=0.5), stop)
    started = {p.pid for p in prometheus_processes()} - before
    stop.set()
    monitoring.prometheus.wait_for(
        lambda: not ({p.pid for p in prometheus_processes()} & started), timeout=60, what="Prometheus to stop"
    )


def test_pods_are_listed_by_discovery_even_without_endpoints_objects(
    kube: KubeApi, cluster: dict[str, Any]
) -> None:
    """No endpoints controller here: the ServiceMonitor's targets come from the Service's selector."""
    assert kube.list(POD, TENANT_NS)
    targets = cluster["monitoring"].prometheus.targets()["activeTargets"]
    assert any(t["labels"].get("service") == "acme-ops-api" for t in targets)


# --- dashboard and alert queries ----------------------------------------------------------------


def test_every_chart_query_is_read(cluster: dict[str, Any]) -> None:
    queries = promcheck.chart_queries()
    kinds = {q.kind for q in queries}
    assert kinds == {"panel", "variable", "alert"}
    assert {q.source.split(" alert ")[1] for q in queries if q.kind == "alert"} >= {
        "HighDLQRate",
        "ComponentNotReady",
    }
    assert all("$" not in q.expr.replace("$1", "") for q in queries)
    stage_no_consumers = next(q for q in queries if q.source.endswith("StageNoConsumers"))
    backlog = '{__name__=~"facepipe_stream_lag|facepipe_stream_pending",stream_role="%s"}'
    assert promcheck.selectors(stage_no_consumers.expr) == [
        *(backlog % role for role in ("ingest", "detected", "embedded")),  # each stage's own input
        'up{component=~"detector|embedder|indexer"}',
    ]


def test_query_check_finds_wrong_names_and_labels(cluster: dict[str, Any]) -> None:
    prometheus = cluster["monitoring"].prometheus
    series(cluster["monitoring"], "facepipe_stream_length")

    def panel(expr: str) -> promcheck.QueryCheck:
        return promcheck.check(prometheus, promcheck.Query("panel", "test", expr, promcheck._grouping(expr)))

    assert panel('max by (tenant, stream) (facepipe_stream_length{namespace=~".*"})').ok
    typo = panel("max by (tenant) (facepipe_stream_lenght) or max by (tenant) (facepipe_stream_length)")
    assert not typo.ok and typo.empty_selectors == ["facepipe_stream_lenght"]
    wrong_label = panel("max by (tenant, shard) (facepipe_stream_length)")
    assert not wrong_label.ok and wrong_label.missing_labels == ["shard"]
    assert "parse error" in panel("sum by (tenant (facepipe_stream_length)").error


def test_empty_chart_queries_are_listed(cluster: dict[str, Any]) -> None:
    """Only the ops-api stream gauges exist here: the worker panels must be reported, not those."""
    series(cluster["monitoring"], "facepipe_stream_pending")
    empty = {result.query.source for result in promcheck.empty_queries(cluster["monitoring"].prometheus)}
    assert "facepipe-queues.json panel 'Stream length' (A)" not in empty
    assert "facepipe-queues.json panel 'Backlog (lag + pending) per stream' (A)" not in empty
    assert "facepipe-alerts.yaml alert QueueBacklog" not in empty
    assert "facepipe-overview.json panel 'Messages acked per second by stage' (A)" in empty


def test_kube_state_metrics_serves_the_deployment_series(cluster: dict[str, Any], kube: KubeApi) -> None:
    deployment = cluster["tenant"].build("deployment", "detector")
    kube.request("POST", DEPLOYMENT.path(TENANT_NS), body=deployment)
    kube.patch(DEPLOYMENT, TENANT_NS, "acme-detector", {"status": {"replicas": 1}}, subresource="status")
    try:
        found = series(cluster["monitoring"], 'kube_deployment_labels{deployment="acme-detector"}')
        assert found[0]["namespace"] == TENANT_NS  # the series' own, kept by honor_labels
        assert found[0]["label_facepipe_io_tenant"] == "acme"
        assert found[0]["label_app_kubernetes_io_component"] == "detector"
        prometheus = cluster["monitoring"].prometheus
        # spec 1, available 0: the ComponentNotReady expression (without its `for`) finds it
        alert = next(q for q in promcheck.chart_queries() if q.source.endswith("ComponentNotReady"))
        firing = prometheus.wait_for(lambda: prometheus.query(alert.expr), timeout=60, what=alert.expr)
        assert {(s["metric"]["tenant"], s["metric"]["component"]) for s in firing} == {("acme", "detector")}
        replicas = next(q for q in promcheck.chart_queries() if "'Replicas per component'" in q.source)
        assert promcheck.check(prometheus, replicas).ok
    finally:
        kube.delete(DEPLOYMENT, TENANT_NS, "acme-detector")


def test_promcheck_command_lists_the_empty_queries(
    cluster: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert promcheck.main([cluster["monitoring"].prometheus.url]) == 1  # the worker panels are empty here
    out = capsys.readouterr().out
    assert "'Messages acked per second by stage'" in out
    assert "queries find their series" in out
