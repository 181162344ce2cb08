"""The real single-node Kubernetes (facepipe.testcluster), one per session, started on first use.

Tests that stop it (the teardown tests) leave it stopped; the next test that needs it starts it
again, so the order of the tests never decides whether they pass.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from facepipe.testcluster.cluster import Cluster

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for productkit


class ClusterManager:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster: Cluster | None = None
        self.starts = 0

    def get(self) -> Cluster:
        if self.cluster is None:
            self.starts += 1
            self.cluster = Cluster(
                self.root / f"run{self.starts}", report=lambda line: print(line, flush=True)
            )
            self.cluster.start()
        return self.cluster

    def stop(self) -> Cluster | None:
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            cluster.stop()
        return cluster


@pytest.fixture(scope="session")
def cluster_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterManager]:
    if os.geteuid() != 0:
        pytest.skip("the real test cluster runs containerd, the kubelet and iptables: it needs root")
    manager = ClusterManager(tmp_path_factory.mktemp("k8s"))
    yield manager
    manager.stop()


@pytest.fixture
def cluster(cluster_manager: ClusterManager) -> Cluster:
    return cluster_manager.get()
