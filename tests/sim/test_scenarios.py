"""Deploy scenarios in the simulation: what the operator installs runs and rolls.

The shipped example, the tenant chart, ingest and search through the ops-api Service, and Purge
run on the real test cluster now (tests/testcluster); these are the scenarios it does not run
yet, through the user's paths (the documented ``facepipe`` CLI). Scaling from queue depth and
the dashboards and alerts: test_scaling_and_monitoring.py. Each scenario adds a row to the
figures table printed at the end of the session.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from scenariokit import (
    SCALE,
    all_ready,
    generated,
    host_settings,
    ingest,
    install,
    replica_set_hashes,
    traces,
)
from simkit import IMAGE, apply, get, is_ready, kubectl, pods, state_of, wait_for

from facepipe.operator.constants import COMPONENTS
from facepipe.operator.envmap import reads
from facepipe.sim.cluster import ClusterSim

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "facepipeline.yaml"


# --- the default installs (issue 16) ---------------------------------------------------------


# --- a working install: processing, rolling, purging ---------------------------------------------


def test_changing_max_hamming_rolls_exactly_the_components_that_read_it(
    cluster_sim: ClusterSim,
    sim_namespace: str,
    models_dir: Path,
    faces_dir: Path,
    tmp_path: Path,
    figure: dict[str, str],
) -> None:
    figure["scenario"] = "maxHamming change rolls its readers"
    install(cluster_sim, sim_namespace, models_dir, "roll")
    before = replica_set_hashes(cluster_sim, sim_namespace, "roll")
    rolled = {c for c in COMPONENTS if reads(c, "DEDUP_MAX_HAMMING")}
    old_pods = {p["metadata"]["name"] for p in _pipeline_pods(cluster_sim, sim_namespace, "roll")}
    replaced = {p for p in old_pods if _component_of(p) in rolled}
    batch_a, batch_b = (
        generated(tmp_path, faces_dir, max(8, int(40 * SCALE)), 1),
        generated(tmp_path, faces_dir, max(4, int(20 * SCALE)), 2),
    )
    during: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: during.update(ingest(cluster_sim, sim_namespace, "roll", "roll", batch_a))
    )
    worker.start()  # the roll starts while this batch is in the pipeline
    wait_for(
        lambda: _stream_length(cluster_sim, sim_namespace) > 0, timeout=120, what="the batch to be published"
    )
    patch = json.dumps({"spec": {"dedup": {"maxHamming": 12}}})
    kubectl(cluster_sim, "patch", "facepipeline", "roll", "-n", sim_namespace, "--type=merge", "-p", patch)

    def roll_done() -> dict[str, set[str]] | None:
        now = replica_set_hashes(cluster_sim, sim_namespace, "roll")
        changed = {c for c in COMPONENTS if now[c] != before[c]}
        settled = all(len(now[c]) == 1 for c in COMPONENTS) and changed == rolled
        # The replaced pods gone for good (not only Terminating): their processes have ended.
        remaining = {p["metadata"]["name"] for p in pods(cluster_sim, sim_namespace)}
        return now if settled and not (replaced & remaining) else None

    after = wait_for(roll_done, timeout=300, interval=1, what=f"exactly {sorted(rolled)} to roll")
    assert {c for c in COMPONENTS if after[c] != before[c]} == rolled
    worker.join(900)
    assert during.get("dlq") == 0 and during.get("drained"), during
    all_ready(cluster_sim, sim_namespace, "roll")
    summary_b = ingest(cluster_sim, sim_namespace, "roll", "roll", batch_b)
    assert summary_b["dlq"] == 0 and summary_b["drained"], summary_b
    # The old processes got SIGTERM, finished and exited 0; nothing else stopped.
    ended = [t for t in cluster_sim.terminations if t.namespace == sim_namespace and not t.init]
    assert {t.pod for t in ended} == replaced
    assert all(t.stop_requested and t.exit_code == 0 for t in ended), ended
    # Nothing lost: every face processed is a point, once.
    settings = host_settings(cluster_sim, sim_namespace, "roll")
    points = traces(settings, "roll")["points"]
    assert points == during["faces_processed"] + summary_b["faces_processed"]
    figure["measured"] = (
        f"rolled {'/'.join(sorted(rolled))}; {len(ended)} old pods SIGTERM -> exit 0; "
        f"{len(batch_a) + len(batch_b)} images, {points} points, 0 lost"
    )


def test_a_deployment_whose_pod_template_cannot_be_honoured_fails_its_pod_with_a_reason(
    cluster_sim: ClusterSim, sim_namespace: str, figure: dict[str, str]
) -> None:
    """A hostPath volume: the pod waits with CreateContainerError naming it; nothing runs in its place."""
    figure["scenario"] = "unhonourable pod template"
    labels = {"app": "host-reader"}
    template = {
        "metadata": {"labels": labels},
        "spec": {
            "containers": [{"name": "main", "image": IMAGE, "command": ["python", "-c", "print('ran')"]}],
            "volumes": [{"name": "host", "hostPath": {"path": "/var/log"}}],
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "host-reader"},
        "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template},
    }
    apply(cluster_sim, deployment, namespace=sim_namespace)

    def refused() -> dict[str, Any] | None:
        found = pods(cluster_sim, sim_namespace, "app=host-reader")
        held = [p for p in found if state_of(p)[1].get("reason") == "CreateContainerError"]
        return held[0] if held else None

    held = wait_for(refused, timeout=120, interval=0.5, what="the pod to be refused")
    message = state_of(held)[1]["message"]
    assert "hostPath" in message and not is_ready(held)
    assert not cluster_sim.logs(sim_namespace, held["metadata"]["name"], "main")  # nothing ran
    status = get(cluster_sim, f"/apis/apps/v1/namespaces/{sim_namespace}/deployments/host-reader") or {}
    assert not (status.get("status") or {}).get("availableReplicas")
    figure["measured"] = f"pod waiting CreateContainerError: {message[:90]}"


# --- helpers --------------------------------------------------------------------------------------


def _pipeline_pods(sim: ClusterSim, namespace: str, instance: str) -> list[dict[str, Any]]:
    from scenariokit import component_pods

    return [p for group in component_pods(sim, namespace, instance).values() for p in group]


def _component_of(pod_name: str) -> str:
    return next(c for c in COMPONENTS if f"-{c}-" in pod_name)


def _stream_length(sim: ClusterSim, namespace: str) -> int:
    import redis

    client = redis.Redis.from_url(sim.backing.url("redis"))
    try:
        return sum(client.xlen(key) for key in client.scan_iter(match="*") if client.type(key) == b"stream")
    finally:
        client.close()
