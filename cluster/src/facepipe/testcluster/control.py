"""Step 4: the control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

The API server runs as a production one does: client certificates and service-account tokens
only (no anonymous requests), Node + RBAC authorization, the default admission plugins (Pod
Security among them) plus NodeRestriction, an audit log of every request's metadata, and the
aggregation layer (front-proxy CA) for metrics APIs. It listens on the machine's own address
only; etcd on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from facepipe.testcluster.layout import API_PORT, POD_CIDR, SERVICE_CIDR, RunDir
from facepipe.testcluster.pki import write_kubeconfig
from facepipe.testcluster.procs import Component, start, wait_until


def etcd_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


# Metadata of every request (who, what, the response code); RequestReceived adds nothing to that.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def etcd(run: RunDir, client_port: int = 2379, peer_port: int = 2380) -> Component:
    """etcd on loopback; the cluster uses the standard ports, a test of the API server alone free ones."""
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    argv = [
        binary,
        "--name",
        "facepipe",
        "--data-dir",
        run.etcd_data,
        "--listen-client-urls",
        etcd_url(client_port),
        "--advertise-client-urls",
        etcd_url(client_port),
        "--listen-peer-urls",
        etcd_url(peer_port),
        "--initial-advertise-peer-urls",
        etcd_url(peer_port),
        "--initial-cluster",
        f"facepipe={etcd_url(peer_port)}",
        "--initial-cluster-state",
        "new",
        # A throw-away test cluster: no fsync per write (the machine's disk is shared and slow).
        "--unsafe-no-fsync",
        "--quota-backend-bytes",
        str(2 * 1024**3),
    ]
    component = start("etcd", argv, run.logs)
    wait_until(component, lambda: _http_ok(f"{etcd_url(client_port)}/health"), 60, "healthy")
    return component


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


def kubectl_ok(kubectl: Path, kubeconfig: Path, *args: str) -> bool:
    return (
        subprocess.run(
            [kubectl, "--kubeconfig", kubeconfig, *args], capture_output=True, timeout=10
        ).returncode
        == 0
    )


def apiserver(
    run: RunDir, bins: dict[str, Path], node_ip: str, port: int = API_PORT, etcd_port: int = 2379
) -> Component:
    """kube-apiserver on ``node_ip:port`` (the node's address in the cluster; loopback for a test
    of the API server alone), and a kubeconfig for every identity of the cluster's PKI."""
    pki = run.pki
    policy = run.root / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    argv = [
        bins["kube-apiserver"],
        f"--advertise-address={node_ip}",
        f"--bind-address={node_ip}",
        f"--secure-port={port}",
        f"--etcd-servers={etcd_url(etcd_port)}",
        "--anonymous-auth=false",
        f"--client-ca-file={pki}/ca.crt",
        f"--tls-cert-file={pki}/kube-apiserver.crt",
        f"--tls-private-key-file={pki}/kube-apiserver.key",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--service-node-port-range=30000-32767",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki}/service-account.pub",
        f"--service-account-signing-key-file={pki}/service-account.key",
        f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
        f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
        f"--kubelet-certificate-authority={pki}/ca.crt",
        "--kubelet-preferred-address-types=InternalIP",
        f"--audit-policy-file={policy}",
        f"--audit-log-path={run.audit_log}",
        "--audit-log-maxsize=200",
        # The aggregation layer: metrics-server, prometheus-adapter and KEDA serve APIs through it.
        f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--proxy-client-cert-file={pki}/front-proxy-client.crt",
        f"--proxy-client-key-file={pki}/front-proxy-client.key",
        "--enable-aggregator-routing=true",
        "--profiling=false",
        "--event-ttl=1h",
    ]
    component = start("kube-apiserver", argv, run.logs)
    server = f"https://{node_ip}:{port}"
    write_kubeconfig(run.kubeconfig, pki, "admin", server)
    for user in ("kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet"):
        write_kubeconfig(run.root / f"{user}.kubeconfig", pki, user, server)
    wait_until(
        component,
        lambda: kubectl_ok(bins["kubectl"], run.kubeconfig, "get", "--raw", "/readyz"),
        240,
        "ready",
    )
    return component


def _controller_flags(kubeconfig: Path) -> list[str]:
    """What controller-manager and scheduler share: their identity, loopback-only, one instance."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--profiling=false",
    ]


def controller_manager(run: RunDir, bins: dict[str, Path]) -> Component:
    pki, kubeconfig = run.pki, run.root / "kube-controller-manager.kubeconfig"
    argv = [
        bins["kube-controller-manager"],
        *_controller_flags(kubeconfig),
        f"--cluster-signing-cert-file={pki}/ca.crt",
        f"--cluster-signing-key-file={pki}/ca.key",
        f"--root-ca-file={pki}/ca.crt",
        f"--service-account-private-key-file={pki}/service-account.key",
        "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--cluster-cidr={POD_CIDR}",
        "--allocate-node-cidrs=false",
    ]
    component = start("kube-controller-manager", argv, run.logs)
    wait_until(component, lambda: _https_healthz(10257), 60, "healthy")
    return component


def scheduler(run: RunDir, bins: dict[str, Path]) -> Component:
    kubeconfig = run.root / "kube-scheduler.kubeconfig"
    argv = [bins["kube-scheduler"], *_controller_flags(kubeconfig)]
    component = start("kube-scheduler", argv, run.logs)
    wait_until(component, lambda: _https_healthz(10259), 60, "healthy")
    return component


def _https_healthz(port: int) -> bool:
    import ssl
    import urllib.request

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the component's self-signed serving cert; /healthz is public
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=context) as response:
        return response.status == 200
