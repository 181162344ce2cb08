"""A pod's status as the kubelet writes it: phase, conditions, addresses, container states.

Built from the pod worker's view of its pod (:class:`PodView`); condition transition times
are kept between builds, so a condition's ``lastTransitionTime`` moves only when it changes.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from facepipe.sim import podspec
from facepipe.sim.containers import ContainerRunner, ContainerState, now


class PodView(Protocol):
    pod: dict[str, Any]
    uid: str
    waiting: dict[str, dict[str, Any]]
    init_runners: list[ContainerRunner]
    runners: list[ContainerRunner]
    stop_requested: asyncio.Event
    scheduled: tuple[bool, str]
    initialized: bool
    started_at: str
    pod_ip: str
    host_ip: str


class PodStatus:
    def __init__(self) -> None:
        self.transitions: dict[str, tuple[str, str]] = {}

    def _states(self, pod: PodView, runners: list[ContainerRunner], init: bool) -> list[dict[str, Any]]:
        by_name = {r.status.name: r for r in runners}
        states = []
        for container in podspec.containers(pod.pod, init=init):
            name = container["name"]
            if name in by_name:
                states.append(by_name[name].status.as_status(pod.uid))
            else:
                state = ContainerState(name, container.get("image", ""))
                if name in pod.waiting:
                    state.state = {"waiting": pod.waiting[name]}
                elif init:
                    state.state = {"waiting": {"reason": "PodInitializing"}}
                states.append(state.as_status(pod.uid))
        return states

    def _phase(self, pod: PodView, containers: list[dict[str, Any]]) -> str:
        failed_init = any(
            r.finished.is_set() and r.status.exit_code not in (0, None) for r in pod.init_runners
        )
        if failed_init:
            return "Failed"
        if not pod.runners:
            return "Pending"
        if all(r.finished.is_set() for r in pod.runners) and not pod.stop_requested.is_set():
            return "Succeeded" if all(r.status.exit_code == 0 for r in pod.runners) else "Failed"
        if any("running" in c["state"] or c["restartCount"] for c in containers):
            return "Running"
        return "Pending"

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != status:
            self.transitions[kind] = (status, now())
        condition = {"type": kind, "status": status, "lastTransitionTime": self.transitions[kind][1]}
        if reason:
            condition["reason"] = reason
        if message:
            condition["message"] = message
        return condition

    def build(self, pod: PodView) -> dict[str, Any]:
        containers = self._states(pod, pod.runners, init=False)
        init = self._states(pod, pod.init_runners, init=True)
        scheduled, verdict = pod.scheduled
        ready = bool(pod.runners) and all(r.status.ready for r in pod.runners)
        not_ready = [c["name"] for c in containers if not c["ready"]]
        status: dict[str, Any] = {
            "phase": self._phase(pod, containers),
            "conditions": [
                self._condition("PodScheduled", scheduled, "" if scheduled else "Unschedulable", verdict),
                self._condition("Initialized", pod.initialized),
                self._condition(
                    "ContainersReady",
                    ready,
                    "" if ready else "ContainersNotReady",
                    "" if ready else f"containers with unready status: [{' '.join(not_ready)}]",
                ),
                self._condition("Ready", ready, "" if ready else "ContainersNotReady"),
            ],
            "containerStatuses": containers,
            "qosClass": "Burstable",
        }
        if init:
            status["initContainerStatuses"] = init
        if pod.started_at:
            status["startTime"] = pod.started_at
            status["hostIP"] = pod.host_ip
            status["hostIPs"] = [{"ip": pod.host_ip}]
        if pod.pod_ip:
            status["podIP"] = pod.pod_ip
            status["podIPs"] = [{"ip": pod.pod_ip}]
        return status
