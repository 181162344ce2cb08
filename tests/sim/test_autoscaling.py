"""Queue depth drives scale, end to end, without a kubelet.

A real redis-server holds the streams; a stand-in ops-api pod (a real process on its own
127.x address) exports their lag and pending; the real Prometheus scrapes it through the
operator chart's ServiceMonitor; prometheus-adapter's rule (the chart's) turns that into the
External metric the operator's HPA asks for; KEDA reads the embedder's stream itself. The
Deployments, HPA and ScaledObject are the operator's builders' output, created by hand.
Controller periods are shortened (HPA sync 1 s, windows and cooldown 5 s): the algorithm is
the same, only the clock is faster.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from clusterkit import FakePod, ReplicaMirror, Tenant, apply_monitoring, operator_chart_objects

from facepipe.operator.kube import DEPLOYMENT, HPA, SCALED_OBJECT, SERVICE, KubeApi
from facepipe.sim.autoscaling import CHART_ADAPTER_RULES, Autoscaling, AutoscalingOptions
from facepipe.sim.emulator import EmulatorServer, write_kubeconfig
from facepipe.sim.hpa import HpaSettings
from facepipe.sim.keda import KedaSettings
from facepipe.sim.kubeutil import EVENT, LabelSelector, condition_status
from facepipe.sim.monitoring import Monitoring, MonitoringOptions, start_monitoring
from facepipe.sim.prometheus_adapter import MetricNotFound, PrometheusAdapter
from facepipe.sim.prometheus_server import PrometheusClient

NS = "tenant-scale"
BACKLOG_METRIC = "facepipe_stream_backlog"
WORKER_SCALING = {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetLagPerReplica": 10}
KEDA_SCALING = {
    "enabled": True,
    "provider": "keda",
    "minReplicas": 0,
    "maxReplicas": 3,
    "targetLagPerReplica": 10,
}
OPS_API_SCALING = {"enabled": True, "minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": 50}


@pytest.fixture(scope="module")
def monitoring(
    kube_emulator: EmulatorServer, kube: KubeApi, tmp_path_factory: pytest.TempPathFactory, redis_server: Any
) -> Iterator[Monitoring]:
    apply_monitoring(kube, operator_chart_objects())
    workdir = tmp_path_factory.mktemp("prometheus")
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", kube_emulator.url)
    # alerts' `for` capped at 2 s, so that one can be seen firing
    options = MonitoringOptions(scrape_interval=1, evaluation_interval=1, sync_interval=0.5, max_alert_for=2)
    with start_monitoring(kubeconfig, workdir / "prom", options) as running:
        yield running


@pytest.fixture(scope="module")
def tenant(kube: KubeApi, redis_server: Any, monitoring: Monitoring) -> Iterator[Tenant]:
    """The operator's objects for one tenant, and its ops-api pod exporting the stream gauges."""
    tenant = Tenant(
        NS,
        redis_server.url,
        detector={"autoscaling": WORKER_SCALING},
        embedder={"autoscaling": KEDA_SCALING},
        opsApi={"autoscaling": OPS_API_SCALING, "resources": {"requests": {"cpu": "100m"}}},
    )
    client = redis.Redis.from_url(redis_server.url)
    for stream in tenant.streams.values():
        client.delete(stream)
    client.close()
    kube.request("POST", SERVICE.path(NS), body=tenant.build("ops_api_service"))
    for component in ("detector", "embedder", "ops-api"):
        kube.request("POST", DEPLOYMENT.path(NS), body=tenant.build("deployment", component))
    kube.patch(DEPLOYMENT, NS, "acme-ops-api", {"spec": {"replicas": 2}})  # one more than it needs
    pod = FakePod(
        kube,
        NS,
        "acme-ops-api-0",
        tenant.pod_labels("ops-api"),
        redis_url=redis_server.url,
        group=tenant.group,
        streams=list(tenant.streams.values()),
    )
    yield tenant
    pod.stop()


@pytest.fixture(scope="module")
def adapter(monitoring: Monitoring) -> PrometheusAdapter:
    return PrometheusAdapter.from_config(
        PrometheusClient(monitoring.prometheus.url),
        CHART_ADAPTER_RULES,  # what the operator chart renders into its <release>-adapter-rules ConfigMap
        relist_interval=0,
    )


def backlog(tenant: Tenant, role: str, namespace: str = NS) -> tuple[str, str, LabelSelector]:
    selector = LabelSelector.parse({"matchLabels": {"tenant": tenant.name, "stream_role": role}})
    return namespace, BACKLOG_METRIC, selector


# --- prometheus-adapter ------------------------------------------------------------------------


def test_adapter_builds_the_query_prometheus_adapter_would(
    adapter: PrometheusAdapter, tenant: Tenant
) -> None:
    adapter.prometheus.wait_for(
        lambda: BACKLOG_METRIC in adapter.metric_names(), timeout=90, what="discovery"
    )
    query = adapter.query_for(*backlog(tenant, "detected"))
    assert query == (
        "sum by (namespace, tenant, stream_role, stream, group) (max by (__name__, namespace, tenant, "
        'stream_role, stream, group) ({__name__=~"facepipe_stream_lag|facepipe_stream_pending",'
        f'stream_role="detected",tenant="acme",namespace="{NS}"}}))'
    )
    selector = LabelSelector.parse(
        {"matchExpressions": [{"key": "stream_role", "operator": "In", "values": ["ingest", "detected"]},
                              {"key": "tenant", "operator": "Exists"}]}
    )  # fmt: skip
    assert 'stream_role=~"detected|ingest",tenant!=""' in adapter.query_for(NS, BACKLOG_METRIC, selector)
    with pytest.raises(MetricNotFound):
        adapter.query_for(NS, "facepipe_no_such_thing", selector)


def test_adapter_value_is_lag_plus_pending(
    adapter: PrometheusAdapter, tenant: Tenant, redis_server: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    stream = tenant.streams["embedded"]
    client.xgroup_create(stream, tenant.group, id="0", mkstream=True)
    for i in range(12):
        client.xadd(stream, {"i": i})
    client.xreadgroup(tenant.group, "indexer-0", {stream: ">"}, count=5)  # 7 lag + 5 pending

    def value() -> list[int]:
        values = [v.milli_value for v in adapter.external_metric(*backlog(tenant, "embedded"))]
        return values if values == [12_000] else []

    adapter.prometheus.wait_for(value, timeout=90, what="backlog 12 through Prometheus")
    assert adapter.external_metric(*backlog(tenant, "embedded", namespace="elsewhere")) == []
    client.delete(stream)
    client.close()


# --- HPA and KEDA ------------------------------------------------------------------------------


def replicas(kube: KubeApi, name: str) -> int:
    deployment = kube.get(DEPLOYMENT, NS, name)
    assert deployment is not None
    return int(deployment["spec"].get("replicas", 1))  # the API server's default


def wait_replicas(
    kube: KubeApi, monitoring: Monitoring, name: str, wanted: int, timeout: float = 120
) -> None:
    monitoring.prometheus.wait_for(
        lambda: replicas(kube, name) == wanted, timeout=timeout, what=f"{name} at {wanted} replicas"
    )


def test_queue_depth_scales_up_and_back_down(
    kube: KubeApi,
    kube_emulator: EmulatorServer,
    monitoring: Monitoring,
    tenant: Tenant,
    redis_server: Any,
    tmp_path: Any,
) -> None:
    for component in ("detector", "embedder", "ops-api"):
        manifest = tenant.build("autoscaler", component)
        kind = SCALED_OBJECT if manifest["kind"] == "ScaledObject" else HPA
        kube.request("POST", kind.path(NS), body=manifest)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    ingest, detected = tenant.streams["ingest"], tenant.streams["detected"]
    client.xgroup_create(ingest, tenant.group, id="0", mkstream=True)
    # What the embedder's first replica does when it starts. Until then its ScaledObject's
    # pendingEntriesCount trigger has no group to count (NOGROUP, a trigger error), and KEDA
    # scales nothing to zero on an error.
    client.xgroup_create(detected, tenant.group, id="0", mkstream=True)
    options = AutoscalingOptions(
        hpa=HpaSettings(sync_period=1, downscale_stabilization=5),
        keda=KedaSettings(default_polling_interval=1, default_cooldown_period=5),
        adapter_relist_interval=1,
    )
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_emulator.url)
    with (
        ReplicaMirror(kube, NS) as mirror,
        Autoscaling(KubeApi.from_environment(str(kubeconfig)), monitoring.prometheus.url, options=options),
    ):
        wait_replicas(kube, monitoring, "acme-embedder", 0)  # nothing to do: KEDA deactivates it
        wait_replicas(kube, monitoring, "acme-ops-api", 1)  # an idle ops-api: cpu far below 50 %
        for i in range(60):
            client.xadd(ingest, {"i": i})
        for i in range(25):
            client.xadd(detected, {"i": i})
        wait_replicas(kube, monitoring, "acme-detector", 5)  # 60 waiting / 10 per replica, capped at 5
        wait_replicas(kube, monitoring, "acme-embedder", 3)  # from zero by KEDA, then its HPA: 25 / 10
        hpa = kube.get(HPA, NS, "acme-detector")
        assert hpa is not None
        assert condition_status(hpa, "ScalingActive") == "True"
        assert hpa["status"]["currentMetrics"][0]["external"]["metric"]["name"] == BACKLOG_METRIC
        assert hpa["status"]["lastScaleTime"]
        scaled = kube.get(SCALED_OBJECT, NS, "acme-embedder")
        assert scaled is not None and condition_status(scaled, "Active") == "True"

        for stream in (ingest, detected):  # the workers' part: read everything and ack it
            for _, entries in client.xreadgroup(tenant.group, "worker-0", {stream: ">"}) or []:
                client.xack(stream, tenant.group, *[entry_id for entry_id, _ in entries])
        wait_replicas(kube, monitoring, "acme-detector", 1)
        wait_replicas(kube, monitoring, "acme-embedder", 0)
    client.close()
    assert mirror.history["acme-detector"][0] == 1 and max(mirror.history["acme-detector"]) == 5
    assert mirror.history["acme-embedder"][-1] == 0 and max(mirror.history["acme-embedder"]) == 3
    assert 4 in mirror.history["acme-detector"]  # no behavior: at most max(2 × 1, 4) in one step
    reasons = {e["reason"] for e in kube.list(EVENT, NS)}
    assert {"SuccessfulRescale", "KEDAScaleTargetActivated", "KEDAScaleTargetDeactivated"} <= reasons
    ops_api = kube.get(HPA, NS, "acme-ops-api")
    assert ops_api is not None
    assert ops_api["status"]["currentMetrics"][0]["resource"]["current"]["averageUtilization"] < 50


def test_cpu_without_pod_processes_is_unavailable(
    kube: KubeApi, monitoring: Monitoring, tenant: Tenant, redis_server: Any
) -> None:
    """A pod the kubelet did not annotate with its PIDs has no cpu sample: as without metrics-server."""
    labels = {"app": "mute"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mute", "namespace": NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}},
        },
    }
    kube.request("POST", DEPLOYMENT.path(NS), body=deployment)
    pod = FakePod(
        kube, NS, "mute-0", labels, redis_url=redis_server.url, group="g", streams=[], annotate_pids=False
    )
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "mute", "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mute"},
            "maxReplicas": 3,
        },
    }
    kube.request("POST", HPA.path(NS), body=hpa)
    try:
        scaler = Autoscaling(kube, None)
        scaler.hpa.sync_once()
        found = kube.get(HPA, NS, "mute")
        assert found is not None
        conditions = {c["type"]: c for c in found["status"]["conditions"]}
        assert conditions["ScalingActive"]["status"] == "False"
        assert conditions["ScalingActive"]["reason"] == "FailedGetResourceMetric"
        assert replicas(kube, "mute") == 1
    finally:
        pod.stop()
        kube.delete(HPA, NS, "mute")
        kube.delete(DEPLOYMENT, NS, "mute")


def test_the_chart_alert_fires_on_a_real_backlog(
    monitoring: Monitoring, tenant: Tenant, redis_server: Any
) -> None:
    """QueueBacklog (> 1000 waiting for 10 m, capped to 2 s here) fires from the scraped gauges."""
    client = redis.Redis.from_url(redis_server.url)
    stream = tenant.streams["embedded"]
    pipe = client.pipeline()
    for i in range(1001):
        pipe.xadd(stream, {"i": i})
    pipe.execute()
    prometheus = monitoring.prometheus
    try:

        def firing() -> list[dict[str, Any]]:
            alerts = prometheus.alerts()
            return [
                a for a in alerts if a["labels"]["alertname"] == "QueueBacklog" and a["state"] == "firing"
            ]

        [alert] = prometheus.wait_for(firing, timeout=90, what="QueueBacklog to fire")
        assert {k: alert["labels"][k] for k in ("namespace", "tenant", "stream", "severity")} == {
            "namespace": NS,
            "tenant": "acme",
            "stream": stream,
            "severity": "warning",
        }
        assert float(alert["value"]) == 1001
    finally:
        client.delete(stream)
        client.close()


def test_with_keda_serving_external_metrics_the_adapter_metric_is_unknown(
    kube: KubeApi, monitoring: Monitoring, tenant: Tenant
) -> None:
    """One external.metrics.k8s.io per cluster: where KEDA serves it, an HPA on the adapter's
    facepipe_stream_backlog cannot get its metric -- what a mixed hpa/keda install would meet."""
    deployment = tenant.build("deployment", "indexer")
    deployment["metadata"]["name"] = "mixed"
    kube.request("POST", DEPLOYMENT.path(NS), body=deployment)
    hpa = tenant.build("hpa", "detector")
    hpa["metadata"]["name"] = "mixed"
    hpa["spec"]["scaleTargetRef"]["name"] = "mixed"
    kube.request("POST", HPA.path(NS), body=hpa)
    try:
        options = AutoscalingOptions(external_metrics_server="keda")
        Autoscaling(kube, monitoring.prometheus.url, options=options).hpa.sync_once()
        found = kube.get(HPA, NS, "mixed")
        assert found is not None
        active = next(c for c in found["status"]["conditions"] if c["type"] == "ScalingActive")
        assert (active["status"], active["reason"]) == ("False", "FailedGetExternalMetric")
        assert "prometheus-adapter is not serving" in active["message"]
    finally:
        kube.delete(HPA, NS, "mixed")
        kube.delete(DEPLOYMENT, NS, "mixed")
