"""The HPA's replica proposals, as kube-controller-manager's replica_calculator.go makes them.

One proposal per metric: ``ceil(usage / target × pods)``, unless the usage ratio is within the
tolerance (10 %), in which case the count stays. External metrics use the summed value (type
``Value``, over the ready pods) or the value per replica (``AverageValue``, over
``status.replicas``); cpu utilisation (``Utilization``) is computed over the pods that have a
sample, with the controller's assumptions for pods that are missing or not yet ready.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class Tolerances:
    scale_down: float = DEFAULT_TOLERANCE
    scale_up: float = DEFAULT_TOLERANCE

    def within(self, usage_ratio: float) -> bool:
        return (1.0 - self.scale_down) <= usage_ratio <= (1.0 + self.scale_up)


def external_value_replicas(
    spec_replicas: int, usage_milli: int, target_milli: int, ready_pods: int, tolerances: Tolerances
) -> int:
    """GetExternalMetricReplicas (target type Value): the ratio applied to the ready pods."""
    usage_ratio = usage_milli / target_milli
    if spec_replicas == 0:
        return math.ceil(usage_ratio)
    if tolerances.within(usage_ratio):
        return spec_replicas
    return math.ceil(usage_ratio * ready_pods)


def external_average_replicas(
    status_replicas: int, usage_milli: int, target_milli_per_pod: int, tolerances: Tolerances
) -> tuple[int, int]:
    """GetExternalPerPodMetricReplicas (AverageValue): ``(replicas, usage per pod in milli)``."""
    replicas = status_replicas
    usage_ratio = usage_milli / (target_milli_per_pod * replicas) if replicas else math.inf
    if not tolerances.within(usage_ratio):
        replicas = math.ceil(usage_milli / target_milli_per_pod)
    per_pod = math.ceil(usage_milli / status_replicas) if status_replicas else usage_milli
    return replicas, per_pod


@dataclass(frozen=True)
class PodSample:
    """One pod as groupPods sees it; ``usage_milli`` None when the metrics API has no sample."""

    name: str
    phase: str
    ready: bool | None  # the Ready condition's status, None when the pod has none
    start_time: float | None
    ready_transition_time: float | None
    deleted: bool
    request_milli: int | None  # sum of the containers' requests, None when one is missing
    usage_milli: int | None
    sample_time: float | None = None
    sample_window: float = 0.0


class MetricsUnavailable(RuntimeError):
    """No usable sample: the HPA cannot compute a proposal from this metric."""


def _utilization(
    usage: Mapping[str, int], requests: Mapping[str, int], target: int
) -> tuple[float, int, int]:
    """GetResourceUtilizationRatio: (ratio, utilization %, average raw usage)."""
    pods = [name for name in usage if name in requests]
    requests_total = sum(requests[name] for name in pods)
    if requests_total == 0:
        raise MetricsUnavailable("no metrics returned matched known pods")
    usage_total = sum(usage[name] for name in pods)
    utilization = int(usage_total * 100 / requests_total)
    return utilization / target, utilization, usage_total // len(pods)


def resource_utilization_replicas(
    current_replicas: int,
    target_utilization: int,
    pods: Sequence[PodSample],
    tolerances: Tolerances,
    *,
    now: float,
    cpu_initialization_period: float = 300.0,
    initial_readiness_delay: float = 30.0,
) -> tuple[int, int, int]:
    """GetResourceReplicas for cpu: ``(replicas, utilization %, average usage milli)``.

    Pods missing a sample count as using their request on a scale-down and nothing on a
    scale-up; pods not (yet) ready count as using nothing on a scale-up; a change of
    direction caused by those assumptions keeps the current count.
    """
    if not pods:
        raise MetricsUnavailable("no pods returned by selector while calculating replica count")
    ready_count, unready, missing, usage = 0, set(), set(), {}
    for pod in pods:
        if pod.deleted or pod.phase == "Failed":
            continue
        if pod.phase == "Pending":
            unready.add(pod.name)
            continue
        if pod.usage_milli is None:
            missing.add(pod.name)
            continue
        if _cpu_unready(pod, now, cpu_initialization_period, initial_readiness_delay):
            unready.add(pod.name)
            continue
        usage[pod.name] = pod.usage_milli
        ready_count += 1
    if not usage:
        raise MetricsUnavailable("did not receive metrics for targeted pods (pods might be unready)")
    requests = {}
    for pod in pods:
        if pod.request_milli is None:
            raise MetricsUnavailable(f"missing request for cpu in a container of Pod {pod.name}")
        requests[pod.name] = pod.request_milli
    ratio, utilization, raw = _utilization(usage, requests, target_utilization)
    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if tolerances.within(ratio):
            return current_replicas, utilization, raw
        return math.ceil(ratio * ready_count), utilization, raw
    if missing and ratio != 1.0:
        fallback = max(100, target_utilization) if ratio < 1.0 else 0
        for name in missing:
            usage[name] = requests[name] * fallback // 100
    if scale_up_with_unready:
        for name in unready:
            usage[name] = 0
    new_ratio, _, _ = _utilization(usage, requests, target_utilization)
    if tolerances.within(new_ratio) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current_replicas, utilization, raw
    replicas = math.ceil(new_ratio * len(usage))
    if (new_ratio < 1.0 and replicas > current_replicas) or (new_ratio > 1.0 and replicas < current_replicas):
        return current_replicas, utilization, raw
    return replicas, utilization, raw


def _cpu_unready(pod: PodSample, now: float, init_period: float, readiness_delay: float) -> bool:
    if pod.ready is None or pod.start_time is None:
        return True
    transition = pod.ready_transition_time or pod.start_time
    if pod.start_time + init_period > now:
        sample_time = pod.sample_time if pod.sample_time is not None else now
        return (not pod.ready) or sample_time < transition + pod.sample_window
    return (not pod.ready) and pod.start_time + readiness_delay > transition
