"""Step 2: certificates and kubeconfigs, made with openssl (as in Kubernetes the Hard Way).

Two CAs: the cluster CA signs every component's client and serving certificate; the front-proxy
CA signs the API server's client certificate for aggregated APIs (metrics, external metrics).
Each identity is what RBAC sees: the admin is in ``system:masters``, the kubelet is
``system:node:<node>`` in ``system:nodes``, the controllers have their ``system:`` users.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from facepipe.testcluster.layout import API_SERVICE_IP, CLUSTER_DOMAIN, NODE_NAME


@dataclass(frozen=True)
class Identity:
    name: str  # file stem under pki/
    cn: str
    org: str = ""
    sans: tuple[str, ...] = ()
    ca: str = "ca"
    server: bool = False


def identities(node_ip: str) -> list[Identity]:
    api_names = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
    )
    return [
        Identity("admin", "admin", "system:masters"),
        Identity("kube-controller-manager", "system:kube-controller-manager"),
        Identity("kube-scheduler", "system:kube-scheduler"),
        Identity("kube-proxy", "system:kube-proxy", "system:node-proxier"),
        Identity(
            "kubelet",
            f"system:node:{NODE_NAME}",
            "system:nodes",
            (f"IP:{node_ip}", f"DNS:{NODE_NAME}"),
            server=True,
        ),
        Identity(
            "kube-apiserver",
            "kube-apiserver",
            sans=(
                f"IP:{node_ip}",
                "IP:127.0.0.1",
                f"IP:{API_SERVICE_IP}",
                "DNS:localhost",
                *(f"DNS:{n}" for n in api_names),
            ),
            server=True,
        ),
        # The API server's identity towards kubelets (logs, exec, port-forward).
        Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
        Identity("front-proxy-client", "front-proxy-client", ca="front-proxy-ca"),
    ]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _genkey(pki: Path, name: str) -> None:
    """An ECDSA P-256 key: as strong as RSA-3072 for TLS here, and fast to make on a busy machine."""
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name, cwd=pki)


def _make_ca(pki: Path, name: str, cn: str) -> None:
    if (pki / f"{name}.crt").exists():
        return
    _genkey(pki, f"{name}.key")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-sha256",
        "-key",
        f"{name}.key",
        "-days",
        "3650",
        "-subj",
        f"/CN={cn}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def _issue(pki: Path, who: Identity) -> None:
    if (pki / f"{who.name}.crt").exists():
        return
    subject = f"/CN={who.cn}" + (f"/O={who.org}" if who.org else "")
    usage = "serverAuth,clientAuth" if who.server else "clientAuth"
    ext = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={usage}",
    ]
    if who.sans:
        ext.append("subjectAltName=" + ",".join(who.sans))
    (pki / f"{who.name}.ext").write_text("\n".join(ext) + "\n")
    _genkey(pki, f"{who.name}.key")
    _openssl("req", "-new", "-key", f"{who.name}.key", "-subj", subject, "-out", f"{who.name}.csr", cwd=pki)
    _openssl(
        "x509",
        "-req",
        "-sha256",
        "-in",
        f"{who.name}.csr",
        "-CA",
        f"{who.ca}.crt",
        "-CAkey",
        f"{who.ca}.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        f"{who.name}.ext",
        "-out",
        f"{who.name}.crt",
        cwd=pki,
    )


def make_pki(pki: Path, node_ip: str) -> None:
    """Every key and certificate the cluster needs, plus the service-account signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    _make_ca(pki, "ca", "facepipe-test-cluster-ca")
    _make_ca(pki, "front-proxy-ca", "facepipe-test-front-proxy-ca")
    for who in identities(node_ip):
        _issue(pki, who)
    if not (pki / "service-account.key").exists():
        _genkey(pki, "service-account.key")
        _openssl("pkey", "-in", "service-account.key", "-pubout", "-out", "service-account.pub", cwd=pki)


def write_kubeconfig(path: Path, pki: Path, user: str, server: str) -> Path:
    """A kubeconfig for one identity of ``pki`` (certificate files referenced, not embedded)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "facepipe", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "facepipe", "context": {"cluster": "facepipe", "user": user}}],
        "current-context": "facepipe",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
