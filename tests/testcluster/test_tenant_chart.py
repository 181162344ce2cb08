"""The tenant chart on the real cluster, on its small-node profile: every container works under
its memory limit (peak read from its cgroup) while the pipeline ingests and the ops-api searches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from productkit import (
    FACES,
    conditions,
    helm,
    install_operator,
    restricted_namespace_with_backing,
    service_ip,
    wait_for,
)

from facepipe.testcluster import backing
from facepipe.testcluster.cluster import Cluster
from facepipe.testcluster.layout import REPO_ROOT

pytestmark = pytest.mark.timeout(3600)

NAMESPACE = "acme"
CHART = REPO_ROOT / "charts" / "face-pipeline"
SMALL_NODE = CHART / "ci" / "small-node-values.yaml"
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")


@pytest.fixture(scope="module")
def tenant(cluster_manager) -> Cluster:
    cluster = cluster_manager.get()
    built = backing.build_images(cluster.run, cluster.run.logs / "build.log")
    install_operator(cluster, built)
    restricted_namespace_with_backing(cluster, NAMESPACE, built)
    helm(cluster, "install", "acme", str(CHART), "--namespace", NAMESPACE, "--values", str(SMALL_NODE))
    return cluster


def _peak_and_limit(pod: dict, container: dict) -> tuple[int, int]:
    """(peak bytes, limit bytes) of one running container, from its memory cgroup (v1 or v2)."""
    uid = pod["metadata"]["uid"]
    container_id = container["containerID"].split("://", 1)[1]
    v1 = list(CGROUP_MEMORY.glob(f"kubepods/**/pod{uid}/{container_id}"))
    if v1:
        peak = int((v1[0] / "memory.max_usage_in_bytes").read_text())
        return peak, int((v1[0] / "memory.limit_in_bytes").read_text())
    [v2] = list(Path("/sys/fs/cgroup").glob(f"kubepods/**/pod{uid}/{container_id}"))
    return int((v2 / "memory.peak").read_text()), int((v2 / "memory.max").read_text())


@pytest.mark.skipif(
    not CGROUP_MEMORY.is_dir(), reason="peak memory is read from cgroup v1's memory controller"
)
def test_the_tenant_chart_works_under_its_memory_limits_on_a_small_node(tenant: Cluster) -> None:
    cluster = tenant
    wait_for(
        lambda: conditions(cluster, "acme", NAMESPACE).get("Ready") == "True", 900, "FacePipeline acme Ready"
    )
    pending = cluster.kubectl(
        "-n", NAMESPACE, "get", "pods", "--field-selector=status.phase=Pending", "-o", "name"
    )
    assert pending.stdout.strip() == "", pending.stdout
    env = {
        **os.environ,
        "REDIS_URL": f"redis://{service_ip(cluster, 'redis', NAMESPACE)}:6379/0",
        "MINIO_ENDPOINT": f"{service_ip(cluster, 'minio', NAMESPACE)}:9000",
        "FACEPIPE_API": f"http://{service_ip(cluster, 'acme-ops-api', NAMESPACE)}:8001",
    }
    manifest = json.loads((FACES / "MANIFEST.json").read_text())["photos"]
    facepipe = [sys.executable, "-m", "facepipe.cli"]
    photos = [str(FACES / name) for name in sorted(manifest)]
    ingest = [*facepipe, "ingest", *photos, "--tenant", "acme", "--tenant-stream", "--wait", "--json"]
    done = subprocess.run(ingest, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["dlq"] == 0, done.stdout
    for photo in photos[:6]:  # the ops-api detects and embeds each query photo
        found = subprocess.run(
            [*facepipe, "search", photo, "--tenant", "acme", "--json"], env=env, capture_output=True
        )
        assert found.returncode == 0, found.stderr

    pods = json.loads(
        cluster.kubectl(
            "-n", NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/instance=acme", "-o", "json"
        ).stdout
    )
    values = yaml.safe_load(SMALL_NODE.read_text())["components"]
    seen = {}
    for pod in pods["items"]:
        component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
        for status in pod["status"]["containerStatuses"]:
            assert status.get("restartCount", 0) == 0, (component, status)
            assert "OOMKilled" not in json.dumps(status), (component, status)
            peak, limit = _peak_and_limit(pod, status)
            expected = values["opsApi" if component == "ops-api" else component]["resources"]["limits"][
                "memory"
            ]
            assert limit == _bytes(expected), (component, limit, expected)
            assert peak < limit, (component, peak, limit)
            seen[component] = f"{peak / 2**20:.0f} MiB of {expected}"
    assert set(seen) == {"detector", "embedder", "indexer", "ops-api"}, seen
    print("peak memory:", seen)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]]
