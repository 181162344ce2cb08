"""An autoscaling/v2 HorizontalPodAutoscaler controller for the cluster simulation.

Every ``sync_period`` (15 s in kube-controller-manager) each HPA is reconciled as
horizontal.go's reconcileAutoscaler does: read the target's scale; a target at 0 replicas with
``minReplicas`` > 0 is left alone (ScalingActive False, ScalingDisabled -- KEDA's territory);
outside [min, max] it is brought back; otherwise every metric gives a proposal
(:mod:`facepipe.sim.hpa_algorithm`), the largest wins (an unavailable metric only blocks a
scale-down), and the result is stabilised, rate-limited and clamped. The target is scaled
through the API, and the HPA's status (currentReplicas, desiredReplicas, currentMetrics,
lastScaleTime, conditions) written back, with a ``SuccessfulRescale`` Event.

External metrics come from an :class:`ExternalMetrics` source (prometheus-adapter, KEDA's
metrics server); Resource (cpu) metrics from the pods' processes
(:mod:`facepipe.sim.resource_metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from facepipe.operator.kube import Kind, KubeApi, KubeApiError
from facepipe.sim import hpa_algorithm as algo
from facepipe.sim import hpa_replicas as calc
from facepipe.sim.controller import PeriodicController
from facepipe.sim.kubeutil import (
    EVENT,
    HPA,
    LabelSelector,
    format_milli,
    milli,
    now_rfc3339,
    pod_ready,
    set_condition,
)
from facepipe.sim.resource_metrics import PodCpuMeter
from facepipe.sim.scale import Scale, ScaleClient, ScaleError

log = logging.getLogger(__name__)


class ExternalMetrics(Protocol):
    """The external.metrics.k8s.io API: values (in thousandths) of one metric for a selector."""

    def external_values(self, namespace: str, metric: str, selector: LabelSelector) -> list[int]: ...


@dataclass(frozen=True)
class HpaSettings:
    """kube-controller-manager's --horizontal-pod-autoscaler-* flags (their defaults)."""

    sync_period: float = 15.0
    downscale_stabilization: float = 300.0
    tolerance: float = calc.DEFAULT_TOLERANCE
    cpu_initialization_period: float = 300.0
    initial_readiness_delay: float = 30.0


_DEFAULT_METRIC = {
    "type": "Resource",
    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
}


class MetricError(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Memory:
    history: algo.ReplicaHistory = field(default_factory=algo.ReplicaHistory)
    cpu: PodCpuMeter = field(default_factory=PodCpuMeter)


class HpaController(PeriodicController):
    thread_name = "sim-hpa"

    def __init__(self, kube: KubeApi, external: ExternalMetrics, settings: HpaSettings | None = None) -> None:
        self.settings = settings or HpaSettings()
        super().__init__(self.settings.sync_period)
        self.kube = kube
        self.external = external
        self.scales = ScaleClient(kube)
        self._memory: dict[str, _Memory] = {}

    # -- reconcile --

    def sync_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        seen = set()
        for hpa in self.kube.list(HPA, None):
            key = f"{hpa['metadata']['namespace']}/{hpa['metadata']['name']}"
            seen.add(key)
            try:
                self.reconcile(hpa, now)
            except KubeApiError as exc:  # a conflict or a vanished object: the next pass retries
                log.warning("HPA %s: %s", key, exc)
            except Exception:  # one malformed HPA must not stop the others
                log.exception("HPA %s could not be reconciled", key)
        for key in set(self._memory) - seen:  # deleted HPAs: forget their history
            del self._memory[key]

    def reconcile(self, hpa: dict[str, Any], now: float) -> None:
        meta, spec = hpa["metadata"], hpa.get("spec") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        memory = self._memory.setdefault(key, _Memory())
        status = dict(hpa.get("status") or {})
        conditions: list[dict[str, Any]] = [dict(c) for c in status.get("conditions") or []]
        try:
            scale = self.scales.get(meta["namespace"], spec.get("scaleTargetRef") or {})
        except (ScaleError, KubeApiError) as exc:
            message = f"the HPA controller was unable to get the target's current scale: {exc}"
            set_condition(conditions, "AbleToScale", "False", "FailedGetScale", message)
            self._write_status(hpa, {**status, "conditions": conditions})
            return
        set_condition(
            conditions,
            "AbleToScale",
            "True",
            "SucceededGetScale",
            "the HPA controller was able to get the target's current scale",
        )
        current = scale.spec_replicas
        memory.history.record_initial(current, now)
        min_replicas = int(spec.get("minReplicas", 1))
        max_replicas = int(spec["maxReplicas"])
        metric_statuses: list[dict[str, Any]] = list(status.get("currentMetrics") or [])
        rescale, desired, reason = True, 0, ""
        if current == 0 and min_replicas != 0:
            rescale = False
            message = "scaling is disabled since the replica count of the target is zero"
            set_condition(conditions, "ScalingActive", "False", "ScalingDisabled", message)
        elif current > max_replicas:
            desired, reason = max_replicas, "Current number of replicas above Spec.MaxReplicas"
        elif current < min_replicas:
            desired, reason = min_replicas, "Current number of replicas below Spec.MinReplicas"
        else:
            behavior = algo.parse_behavior(spec.get("behavior"))
            tolerances = algo.tolerances_for(behavior, self.settings.tolerance)
            proposal = self._proposals(hpa, scale, memory, tolerances, conditions, now)
            if proposal is None:
                self._write_status(hpa, {**status, "currentReplicas": current, "conditions": conditions})
                return
            desired, metric_name, metric_statuses = proposal
            if desired > current:
                reason = f"{metric_name} above target"
            elif desired < current:
                reason = "All metrics below target"
            desired, normalized = algo.normalize(
                memory.history,
                current=current,
                desired=desired,
                min_replicas=min_replicas,
                max_replicas=max_replicas,
                behavior=behavior,
                downscale_window=self.settings.downscale_stabilization,
                now=now,
            )
            for condition in normalized:
                set_condition(conditions, *condition)
            rescale = desired != current
        new_status: dict[str, Any] = {
            **status,
            "observedGeneration": meta.get("generation", 1),
            "currentReplicas": current,
            "currentMetrics": metric_statuses or None,
        }
        if rescale:
            try:
                self.scales.update(scale, desired)
            except ScaleError as exc:
                message = f"the HPA controller was unable to update the target scale: {exc}"
                set_condition(conditions, "AbleToScale", "False", "FailedUpdateScale", message)
                self._write_status(hpa, {**new_status, "conditions": conditions})
                return
            message = f"the HPA controller was able to update the target scale to {desired}"
            set_condition(conditions, "AbleToScale", "True", "SucceededRescale", message)
            memory.history.store_scale_event(algo.parse_behavior(spec.get("behavior")), current, desired, now)
            new_status["lastScaleTime"] = now_rfc3339(now)
            self._event(hpa, "SuccessfulRescale", f"New size: {desired}; reason: {reason}")
            log.info("HPA %s: %d -> %d (%s)", key, current, desired, reason)
        else:
            desired = current
        self._write_status(hpa, {**new_status, "desiredReplicas": desired, "conditions": conditions})

    def _proposals(
        self,
        hpa: Mapping[str, Any],
        scale: Scale,
        memory: _Memory,
        tolerances: calc.Tolerances,
        conditions: list[dict[str, Any]],
        now: float,
    ) -> tuple[int, str, list[dict[str, Any]]] | None:
        """computeReplicasForMetrics: the highest proposal, or None (conditions say why)."""
        # The API server's default when an HPA names no metric: cpu at 80 % of requests.
        metrics = (hpa.get("spec") or {}).get("metrics") or [_DEFAULT_METRIC]
        if not scale.selector:
            set_condition(
                conditions,
                "ScalingActive",
                "False",
                "InvalidSelector",
                "the HPA target's scale is missing a selector",
            )
            return None
        replicas, name, statuses, failures = 0, "", [], []
        for metric in metrics:
            try:
                proposal, proposal_name, metric_status = self._proposal(
                    hpa, metric, scale, memory, tolerances, now
                )
            except (MetricError, calc.MetricsUnavailable) as exc:
                failures.append(exc)
                continue
            statuses.append(metric_status)
            if replicas == 0 or proposal > replicas:
                replicas, name = proposal, proposal_name
        if failures and (len(failures) >= len(metrics) or replicas < scale.spec_replicas):
            first = failures[0]
            reason = first.reason if isinstance(first, MetricError) else "FailedGetResourceMetric"
            message = f"the HPA was unable to compute the replica count: {first}"
            set_condition(conditions, "ScalingActive", "False", reason, message)
            return None
        message = f"the HPA was able to successfully calculate a replica count from {name}"
        set_condition(conditions, "ScalingActive", "True", "ValidMetricFound", message)
        return replicas, name, statuses

    def _proposal(
        self,
        hpa: Mapping[str, Any],
        metric: Mapping[str, Any],
        scale: Scale,
        memory: _Memory,
        tolerances: calc.Tolerances,
        now: float,
    ) -> tuple[int, str, dict[str, Any]]:
        kind = metric.get("type")
        if kind == "External":
            return self._external(hpa, metric["external"], scale, tolerances)
        if kind == "Resource":
            return self._resource(metric["resource"], scale, memory, tolerances, now)
        raise MetricError("InvalidMetricSourceType", f"metric source type {kind!r} is not emulated")

    def _external(
        self, hpa: Mapping[str, Any], source: Mapping[str, Any], scale: Scale, tolerances: calc.Tolerances
    ) -> tuple[int, str, dict[str, Any]]:
        identifier = source["metric"]
        selector = LabelSelector.parse(identifier.get("selector"))
        namespace = hpa["metadata"]["namespace"]
        try:
            values = self.external.external_values(namespace, identifier["name"], selector)
        except Exception as exc:
            message = f"unable to get external metric {namespace}/{identifier['name']}/{selector}: {exc}"
            raise MetricError("FailedGetExternalMetric", message) from exc
        usage = sum(values)
        target = source["target"]
        name = f"external metric {identifier['name']}({selector})"
        if target.get("type") == "AverageValue":
            replicas, per_pod = calc.external_average_replicas(
                scale.status_replicas, usage, milli(target["averageValue"]), tolerances
            )
            current = {"averageValue": format_milli(per_pod)}
        elif target.get("type") == "Value":
            pods = self.scales.pods(scale)
            if scale.spec_replicas != 0 and not pods:
                raise MetricError(
                    "FailedGetExternalMetric", "no pods returned by selector while calculating replica count"
                )
            ready = sum(1 for p in pods if pod_ready(p) and (p.get("status") or {}).get("phase") == "Running")
            replicas = calc.external_value_replicas(
                scale.spec_replicas, usage, milli(target["value"]), ready, tolerances
            )
            current = {"value": format_milli(usage)}
        else:
            raise MetricError(
                "FailedGetExternalMetric", f"invalid external metric target type {target.get('type')!r}"
            )
        status = {"type": "External", "external": {"metric": dict(identifier), "current": current}}
        return replicas, name, status

    def _resource(
        self,
        source: Mapping[str, Any],
        scale: Scale,
        memory: _Memory,
        tolerances: calc.Tolerances,
        now: float,
    ) -> tuple[int, str, dict[str, Any]]:
        target = source.get("target") or {}
        if source.get("name") != "cpu" or target.get("type") != "Utilization":
            what = f"{source.get('name')} ({target.get('type')})"
            message = f"resource metric {what} is not emulated (cpu Utilization is)"
            raise MetricError("FailedGetResourceMetric", message)
        samples = memory.cpu.sample(self.scales.pods(scale), now)
        if not any(s.usage_milli is not None for s in samples):
            raise MetricError(
                "FailedGetResourceMetric",
                "unable to get metrics for resource cpu: no metrics returned from resource metrics API",
            )
        replicas, utilization, raw = calc.resource_utilization_replicas(
            scale.spec_replicas,
            int(target["averageUtilization"]),
            samples,
            tolerances,
            now=now,
            cpu_initialization_period=self.settings.cpu_initialization_period,
            initial_readiness_delay=self.settings.initial_readiness_delay,
        )
        current = {"averageUtilization": utilization, "averageValue": format_milli(raw)}
        status = {"type": "Resource", "resource": {"name": "cpu", "current": current}}
        return replicas, "cpu resource utilization (percentage of request)", status

    # -- writes --

    def _write_status(self, hpa: Mapping[str, Any], status: dict[str, Any]) -> None:
        write_status(self.kube, HPA, hpa, status)

    def _event(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        record_event(self.kube, obj, reason, message, component="horizontal-pod-autoscaler")


def write_status(kube: KubeApi, kind: Kind, obj: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """Merge-patch ``status`` (keys now absent or None are removed); nothing when unchanged."""
    old = obj.get("status") or {}
    new = {k: v for k, v in status.items() if v is not None}
    if new == old:
        return
    patch = {**{k: None for k in old if k not in new}, **new}
    meta = obj["metadata"]
    try:
        kube.patch(kind, meta["namespace"], meta["name"], {"status": patch}, subresource="status")
    except KubeApiError as exc:
        if not exc.not_found:
            raise


def record_event(
    kube: KubeApi, obj: Mapping[str, Any], reason: str, message: str, *, component: str, kind: str = "Normal"
) -> None:
    """A core/v1 Event about ``obj`` (best effort: an event is never worth failing a sync)."""
    meta = obj["metadata"]
    stamp = now_rfc3339()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "source": {"component": component},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        kube.request("POST", EVENT.path(meta["namespace"]), body=event)
    except KubeApiError as exc:
        log.debug("event %s on %s not recorded: %s", reason, meta["name"], exc)
