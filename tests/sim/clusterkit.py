"""Hand-made cluster pieces for the monitoring and autoscaling tests (no kubelet needed).

- :class:`FakePod`: a real process serving ``/metrics`` on its own 127.x address and the Pod
  object a kubelet would report for it (podIP, phase Running, Ready, its PIDs annotation);
- :class:`ReplicaMirror`: what the Deployment controller reports (``status.replicas`` follows
  ``spec.replicas``), so the HPA sees the replicas it asked for;
- :func:`operator_chart_objects`: the ServiceMonitor, PodMonitor and PrometheusRule of the
  operator chart, rendered by the real Helm engine.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

from facepipe.operator import builders
from facepipe.operator.kube import DEPLOYMENT, KubeApi, KubeApiError
from facepipe.operator.spec import PipelineSpec
from facepipe.operator.validation import parse_spec
from facepipe.sim.kubeutil import POD, now_rfc3339
from facepipe.sim.resource_metrics import PIDS_ANNOTATION

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "charts"))
import chartkit  # noqa: E402

MONITORING_KINDS = {
    "ServiceMonitor": "servicemonitors",
    "PodMonitor": "podmonitors",
    "PrometheusRule": "prometheusrules",
}


def loopback_address() -> str:
    """A fresh 127.x.y.z, as a pod's own address (every 127/8 address is on the loopback)."""
    while True:
        address = (
            f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}"
        )
        with socket.socket() as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                continue
        return address


class Tenant:
    """A FacePipeline's children as the operator builds them, ownerless (no FacePipeline here).

    Each component's objects come from a spec holding only that component's settings: a
    pipeline has one autoscaling provider (the operator refuses a mix), but these tests put an
    HPA and a ScaledObject side by side, which the simulation's metrics router serves together.
    """

    def __init__(self, namespace: str, redis_url: str, name: str = "acme", **components: Any) -> None:
        raw = {
            "tenantId": name,
            "redis": {"url": redis_url},
            "storage": {"endpoint": "minio:9000"},
            "vectorDb": {"url": "http://qdrant:6333"},
        }
        self.namespace, self.name = namespace, name
        self.spec: PipelineSpec = parse_spec(name, {**raw, "components": {}})
        self.component_specs = {
            key: parse_spec(name, {**raw, "components": {key: value}}) for key, value in components.items()
        }
        self.owner = builders.PipelineRef(name, namespace, "none")
        self.streams = builders.stream_names(self.spec)
        self.group = self.spec.redis.groupName

    def build(self, what: str, component: str | None = None) -> dict[str, Any]:
        builder = getattr(builders, f"build_{what}")
        key = "opsApi" if component == "ops-api" else component
        spec = self.component_specs.get(key or "", self.spec)
        manifest = builder(self.owner, spec, component) if component else builder(self.owner, self.spec)
        manifest["metadata"].pop("ownerReferences", None)
        return manifest

    def pod_labels(self, component: str) -> dict[str, str]:
        return dict(self.build("deployment", component)["spec"]["template"]["metadata"]["labels"])

    def port(self, component: str) -> dict[str, Any]:
        container = self.build("deployment", component)["spec"]["template"]["spec"]["containers"][0]
        return dict(container["ports"][0])


def operator_chart_objects(namespace: str = "monitoring") -> list[dict[str, Any]]:
    # As `helm install` renders it on a cluster with prometheus-operator (the simulation is one).
    docs = chartkit.render(
        chartkit.OPERATOR_CHART, {}, name="fpo", namespace=namespace, api_versions=chartkit.MONITORING_APIS
    )
    return [doc for doc in docs if doc["kind"] in MONITORING_KINDS]


def apply_monitoring(kube: KubeApi, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        namespace = doc["metadata"]["namespace"]
        path = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/{MONITORING_KINDS[doc['kind']]}"
        kube.request("POST", path, body=doc)


class FakePod:
    """``python stream_exporter.py`` on a pod address, and its Pod object."""

    def __init__(
        self,
        kube: KubeApi,
        namespace: str,
        name: str,
        labels: dict[str, str],
        *,
        redis_url: str,
        group: str,
        streams: list[str],
        port_name: str = "http",
        port: int = 8001,
        annotate_pids: bool = True,
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, name
        self.address, self.port = loopback_address(), port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "stream_exporter.py"),
                self.address,
                str(port),
                redis_url,
                group,
                *streams,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": {PIDS_ANNOTATION: str(self.proc.pid)} if annotate_pids else {},
            },
            "spec": {
                "containers": [
                    {
                        "name": labels.get("app.kubernetes.io/component", "main"),
                        "image": "face-pipeline/test",
                        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "100m"}},
                    }
                ]
            },
        }
        kube.request("POST", POD.path(namespace), body=pod)
        stamp = now_rfc3339()
        status = {
            "phase": "Running",
            "podIP": self.address,
            "startTime": stamp,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": stamp}],
        }
        kube.patch(POD, namespace, name, {"status": status}, subresource="status")

    def stop(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(KubeApiError):
            self.kube.delete(POD, self.namespace, self.name)


class ReplicaMirror:
    """The Deployment controller's report, reduced to ``status.replicas = spec.replicas``."""

    def __init__(self, kube: KubeApi, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.history: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ReplicaMirror:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(KubeApiError):
                for deployment in self.kube.list(DEPLOYMENT, self.namespace):
                    name = deployment["metadata"]["name"]
                    replicas = int(deployment["spec"].get("replicas", 1))
                    seen = self.history.setdefault(name, [])
                    if not seen or seen[-1] != replicas:
                        seen.append(replicas)
                    if (deployment.get("status") or {}).get("replicas") != replicas:
                        status = {
                            "replicas": replicas,
                            "readyReplicas": replicas,
                            "availableReplicas": replicas,
                        }
                        self.kube.patch(
                            DEPLOYMENT, self.namespace, name, {"status": status}, subresource="status"
                        )


def prometheus_processes() -> list[psutil.Process]:
    """Prometheus servers started by this test process (directly or not)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() == "prometheus":
                found.append(child)
    return found
