"""Queue depth drives scale; every dashboard query and alert finds its series; the DLQ alert fires.

A pipeline (tenant chart) takes a backlog published with the documented ``facepipe ingest``,
once per autoscaling provider (a pipeline has one: HPAs read prometheus-adapter's External
metric and KEDA serves its own, and a cluster gives external.metrics.k8s.io to one of them;
the simulation serves both, each metric from the one that knows it):

- ``hpa``: the detector's HPA on the operator chart's prometheus-adapter rule, evaluated
  against the simulation's Prometheus, goes above 1 and back;
- ``keda``: the detector goes above 1 and the embedder from 0 and back to 0 with KEDA's
  redis-streams scaler reading Redis.

The controllers' windows are shortened in the ``cluster_sim`` fixture, as a cluster admin may
set them. Then the simulation's Prometheus, which scraped the pods through the operator chart's
ServiceMonitor and PodMonitor, answers every dashboard panel and alert expression, and
HighDLQRate fires on hostile messages.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from scenariokit import (
    SCALE,
    ReplicaRecorder,
    all_ready,
    generated,
    host_settings,
    ingest,
    pipeline_values,
    prefill_models_claim,
    render_tenant_chart,
    traces,
)
from simkit import apply, clear_namespace, get, wait_for

from facepipe.operator.constants import COMPONENTS
from facepipe.sim import promcheck
from facepipe.sim.cluster import ClusterSim
from facepipe.sim.prometheus_server import PrometheusClient

# Replicas (min, max) of the autoscaled workers per provider; 10 entries of backlog per replica.
BOUNDS = {
    "hpa": {"detector": (1, 3), "embedder": (1, 2)},  # an HPA keeps at least one replica
    "keda": {"detector": (1, 3), "embedder": (0, 2)},
}
# At reduced size (`make test`) one provider: KEDA, whose path is the longer one (scaling to and
# from zero); the HPA stand-in and prometheus-adapter's metric are covered by test_autoscaling.py.
# `make cluster-sim-scenarios` (full size) runs both.
PROVIDERS = sorted(BOUNDS) if SCALE >= 1 else ["keda"]


def autoscaling(provider: str) -> dict[str, Any]:
    return {
        component: {
            "autoscaling": {
                "enabled": True, "provider": provider, "minReplicas": low, "maxReplicas": high,
                "targetLagPerReplica": 10,
            }
        }
        for component, (low, high) in BOUNDS[provider].items()
    }  # fmt: skip


def _replicas(sim: ClusterSim, namespace: str, name: str) -> int | None:
    found = get(sim, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    return None if found is None else int(found["spec"].get("replicas", 1))


@pytest.fixture(scope="module", params=PROVIDERS)
def backlog_run(
    request: pytest.FixtureRequest,
    cluster_sim: ClusterSim,
    models_dir: Path,
    faces_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """Install, publish the backlog, watch the replicas until they are back at their minimum."""
    provider: str = request.param
    tenant, bounds = f"busy-{provider}", BOUNDS[provider]
    names = {component: f"{tenant}-{component}" for component in bounds}
    namespace = f"s-{uuid.uuid4().hex[:8]}"
    cluster_sim.call(cluster_sim.publish_backing(namespace))
    run: dict[str, Any] = {"namespace": namespace, "provider": provider, "tenant": tenant, "names": names}
    try:
        claim = prefill_models_claim(cluster_sim, namespace, models_dir)
        values = pipeline_values(namespace, tenant, claim, components=autoscaling(provider))
        apply(cluster_sim, *render_tenant_chart(values, tenant, namespace), namespace=namespace)
        # A worker whose minimum is 0 goes there (KEDA, after its cooldown); the others come up Ready.
        at_zero = [c for c, (low, _) in bounds.items() if low == 0]
        wait_for(
            lambda: all(_replicas(cluster_sim, namespace, names[c]) == 0 for c in at_zero),
            timeout=300, interval=1, what=f"{at_zero} at 0 replicas",
        )  # fmt: skip
        running = tuple(c for c in COMPONENTS if c not in at_zero)
        all_ready(cluster_sim, namespace, tenant, components=running)
        images = generated(tmp_path_factory.mktemp("backlog"), faces_dir, max(40, int(400 * SCALE)), 7)
        run["images"] = len(images)
        with ReplicaRecorder(cluster_sim, namespace) as replicas:
            published_at = time.time()
            summary: dict[str, Any] = {}
            worker = threading.Thread(
                target=lambda: summary.update(ingest(cluster_sim, namespace, tenant, tenant, images))
            )
            worker.start()
            worker.join(1200)
            drained_at = time.time()
            run["summary"] = summary
            wait_for(
                lambda: all(replicas.now(names[c]) == low for c, (low, _) in bounds.items()),
                timeout=300, interval=1, what="the autoscaled workers back at their minimum",
            )  # fmt: skip
            run["replicas"] = replicas
            run["published_at"], run["drained_at"] = published_at, drained_at
        run["points"] = traces(host_settings(cluster_sim, namespace, tenant), tenant)["points"]
        yield run
    finally:
        clear_namespace(cluster_sim, namespace)


def test_a_backlog_scales_the_workers_up_and_back_to_their_minimum(
    backlog_run: dict[str, Any], figure: dict[str, str]
) -> None:
    provider, names = backlog_run["provider"], backlog_run["names"]
    figure["scenario"] = f"backlog drives {provider.upper()}"
    summary, replicas = backlog_run["summary"], backlog_run["replicas"]
    assert summary.get("drained") and summary["images"] == backlog_run["images"], summary
    assert summary["dlq"] == 0, summary
    # Every face processed is one point: nothing lost, nothing indexed twice.
    assert backlog_run["points"] == summary["faces_processed"], (backlog_run["points"], summary)
    start, drained = backlog_run["published_at"], backlog_run["drained_at"]
    figures = []
    for component, (low, _) in BOUNDS[provider].items():
        name = names[component]
        up = replicas.first_time(name, lambda n, low=low: n > low, after=start)
        down = replicas.first_time(name, lambda n, low=low: n == low, after=up or start)
        if component == "detector" or low == 0:  # the first stage always has the backlog
            assert up is not None and down is not None, (component, replicas.history)
        if up is not None and down is not None:
            figures.append(
                f"{component} {low}->{replicas.peak(name)} up after {up - start:.0f} s, back to {low} "
                f"{down - drained:+.0f} s after the drain"
            )
        else:
            figures.append(f"{component} stayed at {low}")
    figure["measured"] = (
        f"{summary['images']} images, {summary['faces_processed']} faces, lost 0, duplicated 0; "
        + "; ".join(figures)
    )


def test_every_dashboard_query_and_alert_finds_its_series_and_the_dlq_alert_fires(
    cluster_sim: ClusterSim, backlog_run: dict[str, Any], figure: dict[str, str]
) -> None:
    figure["scenario"] = f"dashboards, alerts, DLQ alert ({backlog_run['provider'].upper()} run)"
    assert cluster_sim.prometheus_url, "the simulation runs Prometheus"
    prometheus = PrometheusClient(cluster_sim.prometheus_url)
    namespace, tenant = backlog_run["namespace"], backlog_run["tenant"]
    # Hostile messages on the tenant's ingest stream, in one burst: the detector dead-letters them
    # with a reason it has not used before. HighDLQRate rates facepipe_worker_dead_letters_total,
    # exported at 0 from the worker's start, so the burst counts from its first message (a series
    # born with the burst in it would lose the burst to rate() and increase()). The alert wants
    # > 10 % of the stage's last 5 minutes dead-lettered: the backlog's images were acked within
    # that window, so as many hostile messages again.
    settings = host_settings(cluster_sim, namespace, tenant)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        for n in range(backlog_run["images"] + 1):
            client.xadd(settings.ingest_stream, {"message": json.dumps({"hostile": n})})
    finally:
        client.close()
    firing = prometheus.wait_for(
        lambda: prometheus.query(
            f'ALERTS{{alertname="HighDLQRate",alertstate="firing",namespace="{namespace}",tenant="{tenant}"}}'
        ),
        timeout=300,
        what="HighDLQRate to fire",
    )
    # After the run (backlog, scaling, dead letters), with the pipeline's pods still up at their
    # minimum: every panel, variable and alert of the operator chart finds its series.
    checks = promcheck.check_all(prometheus, promcheck.chart_queries())
    empty = [str(check) for check in checks if not check.ok]
    assert not empty, "queries that find no series:\n" + "\n".join(empty)
    stages = sorted({series["metric"].get("stage", "?") for series in firing})
    figure["measured"] = (
        f"{len(checks)} panel/variable/alert queries find their series; "
        f"HighDLQRate firing for {'/'.join(stages)}"
    )
