"""A kube-state-metrics stand-in: the Deployment series the chart's dashboards and alerts read.

Serves, from the API's Deployments at every scrape, what kube-state-metrics exports under the
same names and labels (``namespace``, ``deployment``):

- ``kube_deployment_spec_replicas``, ``kube_deployment_status_replicas``,
  ``kube_deployment_status_replicas_available``, ``kube_deployment_status_replicas_ready``,
  ``kube_deployment_status_replicas_updated``, ``kube_deployment_status_replicas_unavailable``;
- ``kube_deployment_labels`` with ``label_<sanitised key>`` for the keys allowed by
  ``--metric-labels-allowlist`` (kube-state-metrics exports none by default; the chart's
  alerts need ``app.kubernetes.io/component`` and ``facepipe.io/tenant``, the default here).

Prometheus scrapes it as kube-prometheus-stack does: job ``kube-state-metrics``,
``honor_labels: true`` (the series' own namespace wins over the target's).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from facepipe.operator.kube import DEPLOYMENT, KubeApi
from facepipe.sim.kubeutil import sanitize_label_name

DEFAULT_LABELS_ALLOWLIST = ("app.kubernetes.io/component", "facepipe.io/tenant")

_STATUS_SERIES = {
    "kube_deployment_status_replicas": ("replicas", "The number of replicas per deployment."),
    "kube_deployment_status_replicas_available": ("availableReplicas", "The number of available replicas."),
    "kube_deployment_status_replicas_ready": ("readyReplicas", "The number of ready replicas."),
    "kube_deployment_status_replicas_updated": ("updatedReplicas", "The number of updated replicas."),
    "kube_deployment_status_replicas_unavailable": (
        "unavailableReplicas",
        "The number of unavailable replicas.",
    ),
}


class DeploymentCollector(Collector):
    def __init__(self, kube: KubeApi, labels_allowlist: tuple[str, ...]) -> None:
        self.kube = kube
        self.allowlist = labels_allowlist

    def collect(self) -> Iterator[GaugeMetricFamily]:
        deployments = self.kube.list(DEPLOYMENT, None)
        keys = ["namespace", "deployment"]
        spec = GaugeMetricFamily("kube_deployment_spec_replicas", "Number of desired pods.", labels=keys)
        status = {
            name: GaugeMetricFamily(name, help_text, labels=keys)
            for name, (_, help_text) in _STATUS_SERIES.items()
        }
        label_names = [f"label_{sanitize_label_name(k)}" for k in self.allowlist]
        labels = GaugeMetricFamily(
            "kube_deployment_labels",
            "Kubernetes labels converted to Prometheus labels.",
            labels=keys + label_names,
        )
        for deployment in deployments:
            meta = deployment["metadata"]
            ids = [str(meta["namespace"]), str(meta["name"])]
            replicas = (deployment.get("spec") or {}).get("replicas")
            spec.add_metric(ids, 1 if replicas is None else int(replicas))
            for name, (field, _) in _STATUS_SERIES.items():
                status[name].add_metric(ids, int((deployment.get("status") or {}).get(field) or 0))
            own = meta.get("labels") or {}
            labels.add_metric(ids + [str(own.get(key, "")) for key in self.allowlist], 1)
        yield spec
        yield from status.values()
        yield labels


class KubeStateMetrics:
    """The exporter on 127.0.0.1; :meth:`scrape_config` is its Prometheus job."""

    def __init__(self, kube: KubeApi, labels_allowlist: tuple[str, ...] = DEFAULT_LABELS_ALLOWLIST) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DeploymentCollector(kube, labels_allowlist))
        self.port = 0  # start() binds a free one itself
        self._server: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server, _thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.port = self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def scrape_config(self) -> dict[str, Any]:
        return {
            "job_name": "kube-state-metrics",
            "honor_labels": True,
            "static_configs": [{"targets": [self.address]}],
        }
