"""The cluster simulation's autoscaling: the HPA controller, KEDA, and the external metrics API.

In a cluster, the HPA controller asks ``external.metrics.k8s.io`` for External metrics; the
server behind it is prometheus-adapter (rules of the operator chart) or KEDA's metrics server.
:class:`ExternalMetricsRouter` plays that API: metrics asked with KEDA's selector
(``scaledobject.keda.sh/name``) go to KEDA, every other one to prometheus-adapter.

    with start_autoscaling(kubeconfig, prometheus_url, resolver) as autoscaling:
        ...   # HPAs and ScaledObjects in the API now scale their Deployments

Both controllers stop when the stop event given to them is set, or on ``stop()``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from facepipe.operator.kube import KubeApi
from facepipe.sim.hpa import HpaController, HpaSettings
from facepipe.sim.keda import SCALED_OBJECT_LABEL, KedaController, KedaSettings
from facepipe.sim.keda_scalers import RedisResolver, identity_resolver
from facepipe.sim.kubeutil import LabelSelector
from facepipe.sim.prometheus_adapter import PrometheusAdapter
from facepipe.sim.prometheus_server import PrometheusClient

REPO_ROOT = Path(__file__).resolve().parents[4]
CHART_ADAPTER_RULES = REPO_ROOT / "charts/face-pipeline-operator/adapter/prometheus-adapter-values.yaml"


def adapter_rules_from_config_map(config_map: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``externalRules`` of the operator chart's ``<release>-adapter-rules`` ConfigMap."""
    document = yaml.safe_load((config_map.get("data") or {}).get("config.yaml") or "") or {}
    rules = document.get("externalRules") or []
    if not rules:
        raise ValueError(f"ConfigMap {config_map['metadata']['name']} holds no externalRules")
    return list(rules)


class ExternalMetricsRouter:
    """external.metrics.k8s.io: KEDA's metrics to KEDA, the others to prometheus-adapter."""

    def __init__(self, adapter: PrometheusAdapter | None, keda: KedaController | None) -> None:
        self.adapter = adapter
        self.keda = keda

    def external_values(self, namespace: str, metric: str, selector: LabelSelector) -> list[int]:
        if any(term.key == SCALED_OBJECT_LABEL for term in selector.requirements):
            if self.keda is None:
                raise LookupError(
                    f'the external metrics server knows no metric "{metric}" (KEDA is not serving)'
                )
            return self.keda.external_values(namespace, metric, selector)
        if self.adapter is None:
            raise LookupError(
                f'the external metrics server knows no metric "{metric}" (prometheus-adapter is not serving)'
            )
        return [value.milli_value for value in self.adapter.external_metric(namespace, metric, selector)]


@dataclass(frozen=True)
class AutoscalingOptions:
    """``adapter_rules``: prometheus-adapter's external rules (default: the operator chart's);
    ``adapter_relist_interval``: how often the adapter rediscovers series (its default is 10 m);
    ``external_metrics_server``: who serves external.metrics.k8s.io. A cluster has one
    APIService for it, so with KEDA installed, prometheus-adapter's external metrics are not
    served ("keda") and the other way round ("prometheus-adapter"); "both" (the default) routes
    each request to the one that knows the metric, which no single cluster does."""

    hpa: HpaSettings = field(default_factory=HpaSettings)
    keda: KedaSettings = field(default_factory=KedaSettings)
    adapter_rules: list[dict[str, Any]] | None = None
    adapter_relist_interval: float = 10.0
    external_metrics_server: Literal["both", "keda", "prometheus-adapter"] = "both"


class Autoscaling:
    def __init__(
        self,
        kube: KubeApi,
        prometheus_url: str | None,
        resolver: RedisResolver = identity_resolver,
        options: AutoscalingOptions | None = None,
    ) -> None:
        self.options = options or AutoscalingOptions()
        self.adapter: PrometheusAdapter | None = None
        if prometheus_url:
            rules = self.options.adapter_rules
            if rules is None:
                rules = yaml.safe_load(CHART_ADAPTER_RULES.read_text())["rules"]["external"]
            self.adapter = PrometheusAdapter(
                PrometheusClient(prometheus_url), rules, relist_interval=self.options.adapter_relist_interval
            )
        self.keda = KedaController(kube, resolver, self.options.keda)
        server = self.options.external_metrics_server
        router = ExternalMetricsRouter(
            self.adapter if server in ("both", "prometheus-adapter") else None,
            self.keda if server in ("both", "keda") else None,
        )
        self.hpa = HpaController(kube, router, self.options.hpa)

    def start(self, stop: threading.Event | None = None) -> None:
        self.keda.start(stop)
        self.hpa.start(stop)

    def stop(self) -> None:
        self.hpa.stop()
        self.keda.stop()

    def __enter__(self) -> Autoscaling:
        if not self.hpa.started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_autoscaling(
    kubeconfig: str | Path,
    prometheus_url: str | None,
    resolver: RedisResolver = identity_resolver,
    stop: threading.Event | None = None,
    options: AutoscalingOptions | None = None,
) -> Autoscaling:
    """The HPA controller and KEDA, started on their own threads; ``stop()`` ends them."""
    autoscaling = Autoscaling(KubeApi.from_environment(str(kubeconfig)), prometheus_url, resolver, options)
    autoscaling.start(stop)
    return autoscaling
