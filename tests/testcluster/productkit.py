"""What the test cluster's product tests share: waiting, helm, the operator chart, backing services."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from facepipe.testcluster import backing
from facepipe.testcluster.cluster import Cluster
from facepipe.testcluster.layout import REPO_ROOT

OPERATOR_NS = "facepipe-system"
FACES = Path(os.environ.get("FACEPIPE_FACES_DIR", REPO_ROOT.parent / "shared" / "data" / "faces"))


def wait_for(check, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def helm(cluster: Cluster, *args: str) -> str:
    result = subprocess.run(
        [cluster.bins["helm"], "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def conditions(cluster: Cluster, name: str, namespace: str) -> dict[str, str]:
    obj = json.loads(cluster.kubectl("-n", namespace, "get", "facepipeline", name, "-o", "json").stdout)
    return {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}


def service_ip(cluster: Cluster, name: str, namespace: str) -> str:
    return cluster.kubectl("-n", namespace, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}").stdout


def install_operator(cluster: Cluster, built: dict[str, str]) -> None:
    """The cluster's model mirror, then the operator chart with helm on its defaults (plus the mirror)."""
    if cluster.kubectl("get", "namespace", backing.MIRROR_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", backing.MIRROR_NAMESPACE)
        cluster.apply(backing.manifests(backing.MIRROR_NAMESPACE, built, ("models-index",)))
    if cluster.kubectl("get", "namespace", OPERATOR_NS, check=False).returncode == 0:
        return
    helm(
        cluster,
        "install",
        "facepipe-operator",
        str(REPO_ROOT / "charts" / "face-pipeline-operator"),
        "--namespace",
        OPERATOR_NS,
        "--create-namespace",
        "--set",
        f"operator.modelsIndexUrl={backing.MODELS_INDEX_URL}",
        "--wait",
        "--timeout",
        "5m",
    )


def restricted_namespace_with_backing(cluster: Cluster, namespace: str, built: dict[str, str]) -> None:
    """A namespace enforcing Pod Security ``restricted``, with redis, minio and qdrant running in it."""
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    cluster.apply(backing.manifests(namespace, built))
    for name in backing.TENANT_SERVICES:
        cluster.kubectl("-n", namespace, "rollout", "status", f"deployment/{name}", "--timeout=300s")
