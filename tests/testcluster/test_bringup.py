"""The cluster is the real release, secured as a production one, and goes without a trace."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from facepipe.testcluster.cluster import Cluster
from facepipe.testcluster.layout import API_PORT, KUBERNETES_VERSION, NODE_NAME
from facepipe.testcluster.teardown import leftovers

# The first test to use the cluster starts it: on a machine's first run that builds the images
# (docs/test-cluster.md), so the limit covers a cold start.
pytestmark = pytest.mark.timeout(3600)


def test_the_cluster_serves_the_built_release_on_a_ready_node(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == KUBERNETES_VERSION
    node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
    assert ready == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == KUBERNETES_VERSION
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")


def test_cluster_dns_serves_from_a_ready_coredns(cluster: Cluster) -> None:
    slices = json.loads(
        cluster.kubectl(
            "-n",
            "kube-system",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=kube-dns",
            "-o",
            "json",
        ).stdout
    )
    ready = [e for s in slices["items"] for e in s.get("endpoints") or [] if e["conditions"].get("ready")]
    assert len(ready) == 1, slices


def test_anonymous_requests_are_refused(cluster: Cluster) -> None:
    context = ssl.create_default_context(cafile=str(cluster.run.pki / "ca.crt"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(
            f"https://{cluster.node_ip}:{API_PORT}/api/v1/namespaces", context=context, timeout=10
        )
    assert refused.value.code == 401


def test_stop_removes_everything_it_made(cluster_manager) -> None:
    cluster = cluster_manager.get()
    run = cluster.run
    cluster_manager.stop()
    assert leftovers(run) == []


def test_sigterm_to_make_cluster_removes_everything(tmp_path: Path, cluster_manager) -> None:
    cluster_manager.stop()  # one cluster per machine: the session's gives way
    run_dir = tmp_path / "cli"
    proc = subprocess.Popen(
        [sys.executable, "-m", "facepipe.testcluster", "up", "--no-product", "--dir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.strip() == "cluster ready":
            break
    assert lines and lines[-1] == "cluster ready", "\n".join(lines)
    assert (run_dir / "kubeconfig").exists()
    os.killpg(proc.pid, signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, rest
    from facepipe.testcluster.layout import RunDir

    assert leftovers(RunDir(run_dir.resolve())) == []
