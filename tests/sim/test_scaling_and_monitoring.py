"""Queue depth drives scale; every dashboard query and alert finds its series; the DLQ alert fires.

One pipeline (tenant chart, detector on an HPA over the chart's prometheus-adapter rule,
embedder on KEDA's redis-streams trigger from zero) takes a backlog published with the
documented ``facepipe ingest``. The simulation's autoscalers raise the replicas under the
backlog and lower them after it drained (the controllers' windows are shortened in the
``cluster_sim`` fixture, as a cluster admin may set them). Then the simulation's Prometheus,
which scraped the pods through the operator chart's ServiceMonitor and PodMonitor, answers
every dashboard panel and alert expression, and HighDLQRate fires on hostile messages.
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
from simkit import apply, clear_namespace, wait_for

from facepipe.sim import promcheck
from facepipe.sim.cluster import ClusterSim
from facepipe.sim.prometheus_server import PrometheusClient

TENANT = "busy"
DETECTOR, EMBEDDER = f"{TENANT}-detector", f"{TENANT}-embedder"
# The detector on an HPA (1..3), the embedder on KEDA (0..2); 10 entries of backlog per replica.
AUTOSCALING = {
    component: {
        "autoscaling": {
            "enabled": True, "provider": provider, "minReplicas": low, "maxReplicas": high,
            "targetLagPerReplica": 10,
        }
    }
    for component, provider, low, high in (("detector", "hpa", 1, 3), ("embedder", "keda", 0, 2))
}  # fmt: skip


def _replicas(sim: ClusterSim, namespace: str, name: str) -> int | None:
    from simkit import get

    found = get(sim, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    return None if found is None else int(found["spec"].get("replicas", 1))


@pytest.fixture(scope="module")
def backlog_run(
    cluster_sim: ClusterSim, models_dir: Path, faces_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Install, publish the backlog, watch the replicas until they are back at their minimum."""
    namespace = f"s-{uuid.uuid4().hex[:8]}"
    cluster_sim.call(cluster_sim.publish_backing(namespace))
    run: dict[str, Any] = {"namespace": namespace}
    try:
        claim = prefill_models_claim(cluster_sim, namespace, models_dir)
        values = pipeline_values(namespace, TENANT, claim, components=AUTOSCALING)
        apply(cluster_sim, *render_tenant_chart(values, TENANT, namespace), namespace=namespace)
        # KEDA takes the idle embedder to zero after its cooldown; the others come up Ready.
        wait_for(
            lambda: _replicas(cluster_sim, namespace, EMBEDDER) == 0,
            timeout=300, interval=1, what="KEDA to scale the idle embedder to 0",
        )  # fmt: skip
        all_ready(cluster_sim, namespace, TENANT, components=("detector", "indexer", "ops-api"))
        images = generated(tmp_path_factory.mktemp("backlog"), faces_dir, max(40, int(400 * SCALE)), 7)
        run["images"] = len(images)
        with ReplicaRecorder(cluster_sim, namespace) as replicas:
            published_at = time.time()
            summary: dict[str, Any] = {}
            worker = threading.Thread(
                target=lambda: summary.update(ingest(cluster_sim, namespace, TENANT, TENANT, images))
            )
            worker.start()
            worker.join(1200)
            drained_at = time.time()
            run["summary"] = summary
            wait_for(
                lambda: replicas.now(DETECTOR) == 1 and replicas.now(EMBEDDER) == 0,
                timeout=300, interval=1, what="the detector back at 1 and the embedder at 0",
            )  # fmt: skip
            run["replicas"] = replicas
            run["published_at"], run["drained_at"] = published_at, drained_at
        run["points"] = traces(host_settings(cluster_sim, namespace, TENANT), TENANT)["points"]
        yield run
    finally:
        clear_namespace(cluster_sim, namespace)


def test_a_backlog_scales_the_detector_hpa_up_and_the_embedder_from_zero_then_both_back(
    backlog_run: dict[str, Any], figure: dict[str, str]
) -> None:
    figure["scenario"] = "backlog drives HPA and KEDA"
    summary, replicas = backlog_run["summary"], backlog_run["replicas"]
    assert summary.get("drained") and summary["images"] == backlog_run["images"], summary
    assert summary["dlq"] == 0, summary
    # Every face processed is one point: nothing lost, nothing indexed twice.
    assert backlog_run["points"] == summary["faces_processed"], (backlog_run["points"], summary)
    assert replicas.peak(DETECTOR) > 1, replicas.history
    assert replicas.peak(EMBEDDER) >= 1, replicas.history
    start, drained = backlog_run["published_at"], backlog_run["drained_at"]
    detector_up = replicas.first_time(DETECTOR, lambda n: n > 1, after=start)
    embedder_up = replicas.first_time(EMBEDDER, lambda n: n > 0, after=start)
    detector_down = replicas.first_time(DETECTOR, lambda n: n == 1, after=detector_up or start)
    embedder_down = replicas.first_time(EMBEDDER, lambda n: n == 0, after=embedder_up or start)
    assert None not in (detector_up, embedder_up, detector_down, embedder_down), replicas.history
    figure["measured"] = (
        f"{summary['images']} images, {summary['faces_processed']} faces, lost 0, duplicated 0; "
        f"detector 1->{replicas.peak(DETECTOR)} (HPA) up after {detector_up - start:.0f} s, back to 1 "
        f"{detector_down - drained:+.0f} s after the drain; embedder 0->{replicas.peak(EMBEDDER)} (KEDA) "
        f"up after {embedder_up - start:.0f} s, back to 0 {embedder_down - drained:+.0f} s after the drain"
    )


def test_every_dashboard_query_and_alert_finds_its_series_and_the_dlq_alert_fires(
    cluster_sim: ClusterSim, backlog_run: dict[str, Any], figure: dict[str, str]
) -> None:
    figure["scenario"] = "dashboards, alerts, DLQ alert"
    assert cluster_sim.prometheus_url, "the simulation runs Prometheus"
    prometheus = PrometheusClient(cluster_sim.prometheus_url)
    namespace = backlog_run["namespace"]
    # Hostile messages on the tenant's ingest stream: the detector dead-letters them. A first one
    # makes the (stage, reason) series; rate() and increase() count from its first sample, so the
    # burst that the alert must see comes after Prometheus has scraped it (see the report in
    # docs/cluster-sim.md: the first burst of a never-seen reason is invisible to the alert).
    settings = host_settings(cluster_sim, namespace, TENANT)
    client = redis.Redis.from_url(settings.redis_url)
    dlq = f'facepipe_worker_msgs_dlq_total{{namespace="{namespace}",tenant="{TENANT}",stage="detector"}}'
    try:
        client.xadd(settings.ingest_stream, {"message": json.dumps({"hostile": 0})})
        prometheus.wait_for(lambda: prometheus.query(dlq), timeout=120, what=f"{dlq} to be scraped")
        for n in range(1, 11):
            client.xadd(settings.ingest_stream, {"message": json.dumps({"hostile": n})})
    finally:
        client.close()
    firing = prometheus.wait_for(
        lambda: prometheus.query(
            f'ALERTS{{alertname="HighDLQRate",alertstate="firing",namespace="{namespace}",tenant="{TENANT}"}}'
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
