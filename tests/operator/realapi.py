"""A real kube-apiserver on loopback, for what the emulator does not do (server-side apply).

envtest style: the test cluster's own control-plane steps (facepipe.testcluster.control: etcd and
kube-apiserver with the cluster's flags, RBAC, service-account keys, the admin's kubeconfig in
``system:masters``) on free loopback ports, with no controllers and no nodes: objects are stored,
defaulted, validated and field-managed exactly as in a cluster, and nothing acts on them (no
ReplicaSets, no garbage collection, a deleted namespace stays Terminating).

The binaries: the test cluster's build of the release (facepipe.testcluster.build: cached by
version, built on a miss); etcd from $PATH (Debian's etcd-server).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from facepipe.cli.ports import candidate_port
from facepipe.testcluster import build, control
from facepipe.testcluster.layout import RunDir, cache_dir
from facepipe.testcluster.pki import make_pki
from facepipe.testcluster.procs import Component, StartError


def find_binaries() -> dict[str, Path] | str:
    """kube-apiserver and kubectl by name, or why they cannot be had. The first run on a machine
    builds them (the Go build: docs/test-cluster.md)."""
    if not (shutil.which("etcd") or Path("/usr/bin/etcd").exists()):
        return "no etcd on $PATH (Debian: apt-get install etcd-server)"
    (cache_dir() / "logs").mkdir(parents=True, exist_ok=True)
    folder = build.kubernetes_binaries(cache_dir() / "logs" / "build.log")
    return {name: folder / name for name in ("kube-apiserver", "kubectl")}


@dataclass
class RealApiServer:
    kubeconfig: Path
    components: list[Component]

    def stop(self) -> None:
        for component in reversed(self.components):
            component.stop()


def start_apiserver(workdir: Path, bins: dict[str, Path], *, attempts: int = 3) -> RealApiServer:
    """etcd + kube-apiserver under ``workdir`` on free ports; a port taken meanwhile by another
    process is retried on new ones."""
    for attempt in range(attempts):
        run = RunDir(workdir / f"attempt-{attempt}")
        run.make()
        make_pki(run.pki, "127.0.0.1")  # the API server's certificate names 127.0.0.1
        components: list[Component] = []
        try:
            client, peer, secure = candidate_port(), candidate_port(), candidate_port()
            components.append(control.etcd(run, client_port=client, peer_port=peer))
            components.append(control.apiserver(run, bins, "127.0.0.1", port=secure, etcd_port=client))
            return RealApiServer(run.kubeconfig, components)
        except StartError as exc:
            for component in reversed(components):
                component.stop()
            if attempt == attempts - 1 or "address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")
