"""A real kube-apiserver on loopback, for what the emulator does not do (server-side apply).

envtest style: etcd with its data in a temporary folder and kube-apiserver on free loopback
ports, certificates and the admin's kubeconfig (``system:masters``) from facepipe.testcluster.pki,
RBAC authorization, service-account keys. No controllers and no nodes: objects are stored,
defaulted, validated and field-managed exactly as in a cluster, and nothing acts on them (no
ReplicaSets, no garbage collection, a deleted namespace stays Terminating).

The binary: $FACEPIPE_KUBE_APISERVER, else the test cluster's build of the release
(facepipe.testcluster.build: cached by version, built on a miss); etcd from $PATH (Debian's etcd-server).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from facepipe.testcluster import build
from facepipe.testcluster.layout import SERVICE_CIDR, cache_dir
from facepipe.testcluster.pki import make_pki, write_kubeconfig
from facepipe.testcluster.procs import Component, StartError, start, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


def find_binaries() -> tuple[Path, Path] | str:
    """(kube-apiserver, etcd), or why they are missing. The apiserver is built on a miss (the
    first run on a machine takes the Go build: docs/test-cluster.md)."""
    etcd = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if etcd is None:
        return "no etcd on $PATH (Debian: apt-get install etcd-server)"
    explicit = os.environ.get("FACEPIPE_KUBE_APISERVER")
    if explicit:
        return Path(explicit), Path(etcd)
    (cache_dir() / "logs").mkdir(parents=True, exist_ok=True)
    folder = build.kubernetes_binaries(cache_dir() / "logs" / "build.log")
    return folder / "kube-apiserver", Path(etcd)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RealApiServer:
    url: str
    kubeconfig: Path
    components: list[Component]

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()


def _ready(url: str, pki: Path) -> bool:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(f"{url}/readyz", timeout=5, context=context) as response:
        return response.status == 200


def start_apiserver(workdir: Path, apiserver: Path, etcd: Path, *, attempts: int = 3) -> RealApiServer:
    """etcd + kube-apiserver under ``workdir``; a port taken meanwhile by another process is retried."""
    make_pki(workdir / "pki", "127.0.0.1")  # the API server's certificate names 127.0.0.1
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        components: list[Component] = []
        try:
            return _start(workdir, attempt, apiserver, etcd, components)
        except StartError as exc:
            for component in reversed(components):
                component.stop()
            if attempt == attempts - 1 or "address already in use" not in str(exc):
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def _start(
    workdir: Path, attempt: int, apiserver: Path, etcd: Path, components: list[Component]
) -> RealApiServer:
    pki, logs = workdir / "pki", workdir / "logs"
    client, peer, secure = _free_port(), _free_port(), _free_port()
    etcd_url = f"http://127.0.0.1:{client}"
    etcd_argv = [
        etcd, "--name", "facepipe-test", "--data-dir", workdir / f"etcd-{attempt}",
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"facepipe-test=http://127.0.0.1:{peer}",
        # Throw-away data on a shared disk: no fsync per write.
        "--unsafe-no-fsync",
    ]  # fmt: skip
    components.append(store := start(f"etcd-{attempt}", etcd_argv, logs))
    wait_until(store, lambda: _http_ok(f"{etcd_url}/health"), 60, "healthy")
    url = f"https://127.0.0.1:{secure}"
    argv = [
        apiserver,
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={secure}",
        f"--etcd-servers={etcd_url}",
        "--anonymous-auth=false", f"--client-ca-file={pki}/ca.crt",
        f"--tls-cert-file={pki}/kube-apiserver.crt", f"--tls-private-key-file={pki}/kube-apiserver.key",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki}/service-account.pub",
        f"--service-account-signing-key-file={pki}/service-account.key",
        "--profiling=false",
    ]  # fmt: skip
    components.append(server := start(f"kube-apiserver-{attempt}", argv, logs))
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", pki, "admin", url)
    wait_until(server, lambda: _ready(url, pki), 240, "ready")
    return RealApiServer(url, kubeconfig, components)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
