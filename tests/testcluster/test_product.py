"""The product on the real cluster, as a platform engineer installs it.

The operator chart is installed with the real helm on its defaults (plus the cluster's model
mirror: pods reach nothing off this machine), so the operator runs as a pod under the chart's
ServiceAccount and RBAC. ``examples/facepipeline.yaml`` is applied unchanged in a namespace that
enforces the ``restricted`` Pod Security profile, next to the backing services it names
(``redis``, ``minio``, ``qdrant``). Images come from the root Dockerfile, built here by buildah.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from productkit import (
    FACES,
    OPERATOR_NS,
    conditions,
    install_operator,
    restricted_namespace_with_backing,
    service_ip,
    wait_for,
)

from facepipe.testcluster import backing
from facepipe.testcluster.cluster import Cluster
from facepipe.testcluster.layout import REPO_ROOT

# The first test to use the cluster starts it: on a machine's first run that builds the images
# (docs/test-cluster.md), so the limit covers a cold start.
pytestmark = pytest.mark.timeout(3600)


TENANT_NS = "demo"
EXAMPLE = REPO_ROOT / "examples" / "facepipeline.yaml"
WORKLOADS = ("detector", "embedder", "indexer", "ops-api")


@pytest.fixture(scope="module")
def installed(cluster_manager) -> Cluster:
    cluster = cluster_manager.get()
    built = backing.build_images(cluster.run, cluster.run.logs / "build.log")
    install_operator(cluster, built)
    restricted_namespace_with_backing(cluster, TENANT_NS, built)
    cluster.kubectl("-n", TENANT_NS, "apply", "-f", str(EXAMPLE))
    return cluster


def test_the_example_pipeline_becomes_ready_on_the_built_images(installed: Cluster) -> None:
    cluster = installed
    state = wait_for(
        lambda: (c := conditions(cluster, "demo", TENANT_NS)).get("Ready") == "True" and c,
        900,
        "FacePipeline demo Ready",
    )
    assert state.get("Degraded") == "False", state
    pods = json.loads(
        cluster.kubectl(
            "-n", TENANT_NS, "get", "pods", "-l", "app.kubernetes.io/instance=demo", "-o", "json"
        ).stdout
    )
    by_component = {p["metadata"]["labels"].get("app.kubernetes.io/component"): p for p in pods["items"]}
    assert set(WORKLOADS) <= set(by_component), sorted(by_component)
    for component in WORKLOADS:
        pod = by_component[component]
        assert pod["status"]["phase"] == "Running", (component, pod["status"])
        image = pod["spec"]["containers"][0]["image"]
        assert image.startswith(f"ghcr.io/face-pipeline/{component}:"), image
        assert pod["spec"]["securityContext"].get("runAsNonRoot") is True


def test_the_operator_runs_as_a_pod_under_the_charts_service_account(installed: Cluster) -> None:
    pods = json.loads(installed.kubectl("-n", OPERATOR_NS, "get", "pods", "-o", "json").stdout)["items"]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    assert pods[0]["spec"]["serviceAccountName"].startswith("facepipe-operator")


def test_ingest_with_the_cli_and_search_through_the_ops_api_service(installed: Cluster) -> None:
    cluster = installed
    wait_for(
        lambda: conditions(cluster, "demo", TENANT_NS).get("Ready") == "True", 900, "FacePipeline demo Ready"
    )
    env = {
        **os.environ,
        "REDIS_URL": f"redis://{service_ip(cluster, 'redis', TENANT_NS)}:6379/0",
        "MINIO_ENDPOINT": f"{service_ip(cluster, 'minio', TENANT_NS)}:9000",
        "FACEPIPE_API": f"http://{service_ip(cluster, 'demo-ops-api', TENANT_NS)}:8001",
    }
    manifest = json.loads((FACES / "MANIFEST.json").read_text())["photos"]
    query = FACES / "obama_3.jpg"  # searched for, never ingested: the top hit must be another photo of him
    photos = [FACES / name for name in sorted(manifest) if name != query.name]
    facepipe = [sys.executable, "-m", "facepipe.cli"]
    ingest = subprocess.run(
        [*facepipe, "ingest", *map(str, photos), "--tenant", "demo", "--tenant-stream", "--wait", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    summary = json.loads(ingest.stdout)
    assert summary["images"] == len(photos), summary
    assert summary["dlq"] == 0, summary
    assert summary["faces_processed"] > 0, summary
    found = subprocess.run(
        [*facepipe, "search", str(query), "--tenant", "demo", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0, found.stderr
    [face] = json.loads(found.stdout)["faces"]
    top = face["matches"][0]
    assert manifest[Path(top["url"]).name]["identity"] == "obama", face["matches"][:3]


def test_the_operator_is_never_forbidden(installed: Cluster) -> None:
    """The chart's RBAC covers what the operator does: the audit log has no 403 for its account."""
    wait_for(
        lambda: conditions(installed, "demo", TENANT_NS).get("Ready") == "True",
        900,
        "FacePipeline demo Ready",
    )
    account = json.loads(installed.kubectl("-n", OPERATOR_NS, "get", "pods", "-o", "json").stdout)["items"][
        0
    ]["spec"]["serviceAccountName"]
    user = f"system:serviceaccount:{OPERATOR_NS}:{account}"
    seen, forbidden = 0, []
    for line in installed.run.audit_log.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != user:
            continue
        seen += 1
        if event.get("responseStatus", {}).get("code") == 403:
            forbidden.append(f"{event['verb']} {event['requestURI']}")
    assert seen > 0, f"no request of {user} in the audit log"
    assert forbidden == [], forbidden


def _deployment(cluster: Cluster, namespace: str, name: str) -> dict | None:
    out = cluster.kubectl("-n", namespace, "get", "deployment", name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def test_a_pipeline_moved_from_cuda_to_cpu_loses_tolerations_and_pull_secrets(installed: Cluster) -> None:
    """Server-side apply: a field the operator stops producing leaves the live Deployment."""
    cluster, namespace = installed, "gpu-move"
    cluster.kubectl("create", "namespace", namespace)
    spec = {
        "tenantId": "gpumove",
        "redis": {"url": f"redis://redis.{TENANT_NS}.svc:6379/0"},
        "storage": {"endpoint": f"minio.{TENANT_NS}.svc:9000"},
        "vectorDb": {"url": f"http://qdrant.{TENANT_NS}.svc:6333"},
        "models": {"device": "cuda"},
        "image": {"pullSecrets": ["registry-cred"]},
    }
    manifest = {
        "apiVersion": "facepipe.io/v1alpha1",
        "kind": "FacePipeline",
        "metadata": {"name": "moving"},
        "spec": spec,
    }
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest))

    def gpu_fields() -> tuple[list, list]:
        live = _deployment(cluster, namespace, "moving-detector") or {}
        pod = live.get("spec", {}).get("template", {}).get("spec", {})
        return pod.get("tolerations") or [], pod.get("imagePullSecrets") or []

    tolerations, secrets = wait_for(lambda: all(gpu_fields()) and gpu_fields(), 300, "the cuda Deployment")
    assert secrets == [{"name": "registry-cred"}] and tolerations, (tolerations, secrets)
    patch = {"spec": {"models": {"device": "cpu"}, "image": {"pullSecrets": []}}}
    cluster.kubectl(
        "-n", namespace, "patch", "facepipeline", "moving", "--type=merge", "-p", json.dumps(patch)
    )
    wait_for(
        lambda: gpu_fields() == ([], []), 300, "tolerations and pull secrets gone from the live Deployment"
    )
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


class PodWatch:
    """Every pod event of a namespace, from ``kubectl get pods -w``: the exit codes of pods that go."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [cluster.bins["kubectl"], "--kubeconfig", str(cluster.kubeconfig), "-n", namespace, "get", "pods",
             "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.exits: dict[str, dict[str, int]] = {}  # pod -> container -> exit code
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                pod = event["object"]
                for status in pod.get("status", {}).get("containerStatuses") or []:
                    done = status.get("state", {}).get("terminated")
                    if done is not None:
                        self.exits.setdefault(pod["metadata"]["name"], {})[status["name"]] = done["exitCode"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_changing_max_hamming_rolls_exactly_its_readers_and_old_pods_exit_0(installed: Cluster) -> None:
    from facepipe.operator.constants import COMPONENTS
    from facepipe.operator.envmap import reads

    cluster = installed
    wait_for(
        lambda: conditions(cluster, "demo", TENANT_NS).get("Ready") == "True", 900, "FacePipeline demo Ready"
    )

    def templates() -> dict[str, str]:
        return {
            c: json.dumps((_deployment(cluster, TENANT_NS, f"demo-{c}") or {})["spec"]["template"])
            for c in COMPONENTS
        }

    def pods_of(components: set[str]) -> set[str]:
        listed = json.loads(
            cluster.kubectl(
                "-n", TENANT_NS, "get", "pods", "-l", "app.kubernetes.io/instance=demo", "-o", "json"
            ).stdout
        )
        return {
            p["metadata"]["name"]
            for p in listed["items"]
            if p["metadata"]["labels"]["app.kubernetes.io/component"] in components
        }

    readers = {c for c in COMPONENTS if reads(c, "DEDUP_MAX_HAMMING")}
    before, old_pods = templates(), pods_of(set(COMPONENTS))
    replaced = pods_of(readers)
    watch = PodWatch(cluster, TENANT_NS)
    try:
        patch = {"spec": {"dedup": {"maxHamming": 12}}}
        cluster.kubectl(
            "-n", TENANT_NS, "patch", "facepipeline", "demo", "--type=merge", "-p", json.dumps(patch)
        )
        wait_for(
            lambda: not (replaced & pods_of(set(COMPONENTS))), 600, f"the old {sorted(readers)} pods gone"
        )
        after = templates()
        assert {c for c in COMPONENTS if after[c] != before[c]} == readers
        assert old_pods - replaced <= pods_of(set(COMPONENTS)), (
            "a pod that does not read maxHamming was replaced"
        )
        wait_for(lambda: replaced <= set(watch.exits), 60, "the replaced pods' exit codes")
    finally:
        watch.stop()
    assert {pod: codes for pod, codes in watch.exits.items() if pod in replaced} == {
        pod: {name: 0 for name in watch.exits[pod]} for pod in replaced
    }
    wait_for(
        lambda: conditions(cluster, "demo", TENANT_NS).get("Ready") == "True", 600, "Ready after the roll"
    )


def test_purge_stops_the_pods_first_and_leaves_no_trace(installed: Cluster) -> None:
    cluster = installed
    wait_for(
        lambda: conditions(cluster, "demo", TENANT_NS).get("Ready") == "True", 900, "FacePipeline demo Ready"
    )
    patch = {"spec": {"deletionPolicy": "Purge"}}
    cluster.kubectl("-n", TENANT_NS, "patch", "facepipeline", "demo", "--type=merge", "-p", json.dumps(patch))
    cluster.kubectl("-n", TENANT_NS, "delete", "facepipeline", "demo", "--wait=false")

    def gone() -> bool:
        return cluster.kubectl("-n", TENANT_NS, "get", "facepipeline", "demo", check=False).returncode != 0

    wait_for(gone, 600, "the purged FacePipeline gone")
    pods = json.loads(
        cluster.kubectl(
            "-n", TENANT_NS, "get", "pods", "-l", "app.kubernetes.io/instance=demo", "-o", "json"
        ).stdout
    )
    assert pods["items"] == [], [p["metadata"]["name"] for p in pods["items"]]
    # No trace in the tenant's Redis (keys carry the hash tag {demo}) nor in its S3 buckets.
    import redis
    from minio import Minio

    client = redis.Redis(host=service_ip(cluster, "redis", TENANT_NS), port=6379)
    assert [k for k in client.scan_iter(match="*demo*")] == []
    s3 = Minio(f"{service_ip(cluster, 'minio', TENANT_NS)}:9000", "minioadmin", "minioadmin", secure=False)
    buckets = [b.name for b in s3.list_buckets()]
    objects = [(bucket, o.object_name) for bucket in buckets for o in s3.list_objects(bucket, recursive=True)]
    left = [(bucket, name) for bucket, name in objects if name.startswith("demo/")]
    assert left == [], left[:10]
