"""Versions, addresses and where everything lives: the one place to change any of them."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]
MODULES = REPO_ROOT / "cluster" / "modules"

# 1.34 is the newest release that runs on cgroup v1 hosts without opting out (1.35 refuses them
# unless failCgroupV1 is false) and the last that supports containerd 1.6, Debian 12's.
KUBERNETES_VERSION = "v1.34.4"

SERVICE_CIDR = "10.32.0.0/24"
API_SERVICE_IP = "10.32.0.1"
DNS_SERVICE_IP = "10.32.0.10"
POD_CIDR = "10.200.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
NODE_NAME = "facepipe-node"
API_PORT = 6443


def cache_dir() -> Path:
    """Binaries and images, kept between clusters (only the first start on a machine builds)."""
    base = os.environ.get("FACEPIPE_CLUSTER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "facepipe-cluster"
    )
    return Path(base)


def node_ip() -> str:
    """The machine's own non-loopback address: pods reach the API server through it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it only picks the route's source
        return sock.getsockname()[0]


@dataclass(frozen=True)
class RunDir:
    """One cluster's state: certificates, configs, logs, runtime state (removed by teardown)."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_state / "containerd.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    def make(self) -> None:
        for path in (
            self.pki,
            self.logs,
            self.etcd_data,
            self.containerd_state,
            self.kubelet_dir,
            self.cni_conf,
        ):
            path.mkdir(parents=True, exist_ok=True)
