"""What the cluster simulation adds beside its pods: the operator chart's monitors, Prometheus, autoscalers.

A cluster that runs the product has prometheus-operator (scraping what the operator chart's
ServiceMonitor and PodMonitor select, evaluating its PrometheusRule), an HPA controller with
prometheus-adapter serving ``external.metrics.k8s.io``, and KEDA. :class:`Addons` brings the
same to a running :class:`~facepipe.sim.cluster.ClusterSim`:

- the operator chart rendered by the real Helm engine as ``helm install`` renders it on a
  cluster with prometheus-operator, and its ServiceMonitor, PodMonitor and PrometheusRule
  applied (the operator itself runs as a host process, see :mod:`facepipe.sim.cluster`);
- :func:`facepipe.sim.monitoring.start_monitoring`: a real Prometheus scraping the pods (the
  kubelet stand-in gives them their podIP, Ready condition and PID annotation);
- :func:`facepipe.sim.autoscaling.start_autoscaling`: HPA v2 (External metrics from the
  chart's prometheus-adapter rule against that Prometheus, Resource cpu from the pods'
  processes) and KEDA (redis-streams read from Redis through the Services' addresses).

The controller flags (HPA sync period and downscale stabilisation, KEDA's default polling
interval and cooldown) are :class:`AutoscalingOptions`, as a cluster admin sets them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

from facepipe.operator.kube import Kind, KubeApi, KubeApiError
from facepipe.sim.autoscaling import Autoscaling, AutoscalingOptions, start_autoscaling
from facepipe.sim.kubeutil import POD_MONITOR, PROMETHEUS_RULE, SERVICE_MONITOR
from facepipe.sim.monitoring import Monitoring, MonitoringOptions, start_monitoring

MONITORING_KINDS: dict[str, Kind] = {k.kind: k for k in (SERVICE_MONITOR, POD_MONITOR, PROMETHEUS_RULE)}
# What a cluster with prometheus-operator adds to discovery (Helm's .Capabilities.APIVersions).
MONITORING_APIS = [f"monitoring.coreos.com/v1/{kind}" for kind in MONITORING_KINDS]
Resolver = Callable[[str, int, str], tuple[str, int]]


def render_chart(
    chart: Path,
    values: dict[str, Any],
    *,
    name: str,
    namespace: str,
    api_versions: list[str] | None = None,
) -> dict[str, str]:
    """The real Helm engine's output by template path; ``api_versions`` as `helm template --api-versions`.

    helm-python-sdk's Chart.render does not forward API versions; its native call takes them.
    """
    options: dict[str, Any] = {"name": name, "namespace": namespace}
    if api_versions:
        options["api_versions"] = list(api_versions)
    loaded = helm.Chart.load(str(chart))
    payload = _native.call_string("helm_render", loaded._raw(), json.dumps(values), json.dumps(options))
    return dict(json.loads(payload))


def chart_documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [
        doc
        for path, text in sorted(rendered.items())
        if path.endswith((".yaml", ".yml"))
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def apply_chart_monitors(
    kube: KubeApi, repo: Path, namespace: str, release: str = "face-pipeline-operator"
) -> list[str]:
    """Create (or replace) the operator chart's monitoring objects in ``namespace``; their names."""
    rendered = render_chart(
        repo / "charts" / "face-pipeline-operator", {}, name=release, namespace=namespace,
        api_versions=MONITORING_APIS,
    )  # fmt: skip
    applied = []
    for doc in chart_documents(rendered):
        kind = MONITORING_KINDS.get(doc["kind"])
        if kind is None:
            continue
        doc["metadata"]["namespace"] = namespace
        existing = kube.get(kind, namespace, doc["metadata"]["name"])
        if existing is None:
            kube.request("POST", kind.path(namespace), body=doc)
        else:
            doc["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            kube.request("PUT", kind.path(namespace, doc["metadata"]["name"]), body=doc)
        applied.append(f"{doc['kind']}/{doc['metadata']['name']}")
    return applied


@dataclass(frozen=True)
class AddonOptions:
    """``None`` for monitoring or autoscaling leaves it out (autoscaling without Prometheus has
    no External metrics from prometheus-adapter, as a cluster without it)."""

    monitoring: MonitoringOptions | None = field(default_factory=MonitoringOptions)
    autoscaling: AutoscalingOptions | None = field(default_factory=AutoscalingOptions)
    chart_monitors: bool = True


class Addons:
    def __init__(self, kubeconfig: Path, folder: Path, resolver: Resolver, options: AddonOptions) -> None:
        self.kubeconfig, self.folder, self.resolver, self.options = kubeconfig, folder, resolver, options
        self.monitoring: Monitoring | None = None
        self.autoscaling: Autoscaling | None = None
        self.monitors: list[str] = []
        self._stop = threading.Event()

    @property
    def prometheus_url(self) -> str | None:
        return self.monitoring.prometheus.url if self.monitoring else None

    def start(self, repo: Path, namespace: str) -> Addons:
        try:
            if self.options.chart_monitors:
                kube = KubeApi.from_environment(str(self.kubeconfig))
                try:
                    self.monitors = apply_chart_monitors(kube, repo, namespace)
                except KubeApiError as exc:
                    raise RuntimeError(f"the operator chart's monitors were not applied: {exc}") from exc
                finally:
                    kube.close()
            if self.options.monitoring is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.monitoring = start_monitoring(
                    self.kubeconfig, self.folder, self.options.monitoring, self._stop
                )
            if self.options.autoscaling is not None:
                self.autoscaling = start_autoscaling(
                    self.kubeconfig, self.prometheus_url, self.resolver, self._stop, self.options.autoscaling
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.autoscaling is not None:
            self.autoscaling.stop()
        if self.monitoring is not None:
            self.monitoring.stop()
