"""Pod CPU usage for the HPA's Resource metrics: metrics-server, from the pods' processes.

A simulated pod is a set of local processes. The kubelet stand-in names them in the pod's
annotation ``sim.facepipe.io/pids`` (comma-separated PIDs of its containers' main processes);
a pod's usage is the CPU time of those processes and all their descendants, measured between
two passes like metrics-server's window. A pod without the annotation, or whose processes are
gone, or seen for the first time, has no sample -- what the HPA sees when metrics-server has
none (the pod counts as "missing", or the metric is unavailable when no pod has a sample).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psutil

from facepipe.sim.hpa_replicas import PodSample
from facepipe.sim.kubeutil import milli, parse_time

PIDS_ANNOTATION = "sim.facepipe.io/pids"


@dataclass(frozen=True)
class _Reading:
    cpu_seconds: float
    at: float


def _tree_cpu_seconds(pids: list[int]) -> float | None:
    """User + system CPU of the processes and their descendants; None when none is alive."""
    total, alive = 0.0, False
    for pid in pids:
        try:
            root = psutil.Process(pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            alive = True
            total += times.user + times.system
    return total if alive else None


def _pids(pod: Mapping[str, Any]) -> list[int]:
    text = ((pod.get("metadata") or {}).get("annotations") or {}).get(PIDS_ANNOTATION, "")
    return [int(p) for p in str(text).replace(" ", "").split(",") if p.isdigit()]


def cpu_request_milli(pod: Mapping[str, Any]) -> int | None:
    """Sum of the containers' cpu requests; None when a container has none (the HPA refuses)."""
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        request = ((container.get("resources") or {}).get("requests") or {}).get("cpu")
        if request is None:
            return None
        total += milli(request)
    return total


class PodCpuMeter:
    """Keeps the last reading per pod; each :meth:`sample` gives usage since the previous one."""

    def __init__(self) -> None:
        self._last: dict[str, _Reading] = {}

    def sample(self, pods: list[dict[str, Any]], now: float | None = None) -> list[PodSample]:
        now = time.time() if now is None else now
        samples = []
        for pod in pods:
            meta, status = pod.get("metadata") or {}, pod.get("status") or {}
            uid = str(meta.get("uid") or meta.get("name"))
            pids = _pids(pod)
            usage: int | None = None
            window = 0.0
            cpu = _tree_cpu_seconds(pids) if pids else None
            if cpu is not None:
                previous = self._last.get(uid)
                if previous is not None and now > previous.at:
                    window = now - previous.at
                    usage = max(0, round((cpu - previous.cpu_seconds) / window * 1000))
                self._last[uid] = _Reading(cpu, now)
            ready_condition = next(
                (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None
            )
            start = parse_time(status.get("startTime"))
            transition = parse_time((ready_condition or {}).get("lastTransitionTime"))
            samples.append(
                PodSample(
                    name=str(meta.get("name")),
                    phase=str(status.get("phase") or "Pending"),
                    ready=None if ready_condition is None else ready_condition.get("status") == "True",
                    start_time=start.timestamp() if start else None,
                    ready_transition_time=transition.timestamp() if transition else None,
                    deleted=bool(meta.get("deletionTimestamp")),
                    request_milli=cpu_request_milli(pod),
                    usage_milli=usage,
                    sample_time=now if usage is not None else None,
                    sample_window=window,
                )
            )
        alive = {str((p.get("metadata") or {}).get("uid") or p["metadata"].get("name")) for p in pods}
        for uid in list(self._last):
            if uid not in alive:
                del self._last[uid]
        return samples
