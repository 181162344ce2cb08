"""Step 5: the node: containerd (Debian's, CRI v1), the kubelet and kube-proxy.

containerd keeps its images under the cache dir, so images built once survive the cluster;
everything else it has (sandboxes, containers, mounts) lives in the run dir and goes with it.
The kubelet authenticates requests with certificates and webhook tokens, authorizes through
the API server, uses cgroupfs (PID 1 here is not systemd) and never collects images (they are
built here, no registry could bring them back).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from facepipe.testcluster.layout import CLUSTER_DOMAIN, DNS_SERVICE_IP, NODE_NAME, POD_CIDR, RunDir, cache_dir
from facepipe.testcluster.procs import Component, start, wait_until

PAUSE_IMAGE = "localhost/facepipe/pause:3.10"


def containerd_root() -> Path:
    return cache_dir() / "containerd-root"


def containerd(run: RunDir) -> Component:
    state = run.containerd_state
    config = f"""version = 2
root = "{containerd_root()}"
state = "{state}/state"
[grpc]
  address = "{run.containerd_socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This machine's processes may not lower an OOM score (the kubelet asks -998 for sandboxes):
  # containerd clamps to its own, as on rootless and sandboxed hosts.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{run.cni_conf}"
"""
    path = state / "config.toml"
    path.write_text(config)
    component = start(
        "containerd", [shutil.which("containerd") or "/usr/bin/containerd", "--config", path], run.logs
    )
    wait_until(component, lambda: ctr(run, "version").returncode == 0, 30, "serving")
    return component


def ctr(run: RunDir, *args: str, namespace: str = "k8s.io") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ctr", "--address", str(run.containerd_socket), "-n", namespace, *args],
        capture_output=True,
        text=True,
    )


def kubelet(run: RunDir, bins: dict[str, Path], node_ip: str) -> Component:
    pki = run.pki
    resolv = run.root / "resolv.conf"
    resolv.write_text("# pods resolve through the cluster DNS only\n")
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "readOnlyPort": 0,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki / "kubelet.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet.key"),
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_SERVICE_IP],
        "resolvConf": str(resolv),
        "podCIDR": POD_CIDR,
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{run.containerd_socket}",
        "failSwapOn": False,
        # Images are built on this machine; a collected one could not be pulled back.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "200Mi", "nodefs.available": "3%", "imagefs.available": "3%"},
        "serializeImagePulls": False,
        "registerNode": True,
        "shutdownGracePeriod": "0s",
    }
    path = run.root / "kubelet-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        bins["kubelet"],
        f"--config={path}",
        f"--kubeconfig={run.root / 'kubelet.kubeconfig'}",
        f"--root-dir={run.kubelet_dir}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={node_ip}",
        "--v=1",
    ]
    component = start("kubelet", argv, run.logs)
    wait_until(component, lambda: _node_ready(bins, run), 180, "Ready")
    return component


def _node_ready(bins: dict[str, Path], run: RunDir) -> bool:
    out = subprocess.run(
        [
            bins["kubectl"],
            "--kubeconfig",
            run.kubeconfig,
            "get",
            "node",
            NODE_NAME,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return out.stdout.strip() == "True"


def kube_proxy(run: RunDir, bins: dict[str, Path], node_ip: str) -> Component:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(run.root / "kube-proxy.kubeconfig")},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": NODE_NAME,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{node_ip}/32"],
        # Leave the machine's conntrack settings as they are.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }
    path = run.root / "kube-proxy-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    component = start("kube-proxy", [bins["kube-proxy"], f"--config={path}"], run.logs)
    wait_until(component, lambda: _http_ok("http://127.0.0.1:10256/healthz"), 60, "healthy")
    return component


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200
