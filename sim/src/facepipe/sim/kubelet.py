"""The kubelet stand-in: one node (``sim-node``) that runs every pod the API holds.

It registers its Node object, watches pods, and gives each one a
:class:`~facepipe.sim.podworker.PodWorker` (there is no scheduler: every pod that fits this
node is bound to it). A pod marked for deletion is stopped gracefully by its worker; one
removed outright is stopped with its own grace period. On shutdown every pod gets SIGTERM
and a short grace, then SIGKILL, and nothing more is written to the API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from facepipe.sim.apiclient import Api, Informer, Kind
from facepipe.sim.podspec import NODE_CAPACITY, NODE_LABELS, NODE_NAME
from facepipe.sim.podworker import Node, PodWorker

log = logging.getLogger("facepipe.sim.kubelet")
NODE = Kind("v1", "Node", "nodes", namespaced=False)
SHUTDOWN_GRACE = 5.0


class Kubelet:
    def __init__(self, node: Node, pods: Informer) -> None:
        self.node = node
        self.workers: dict[str, PodWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        pods.listeners.append(self._pod_event)

    async def register(self) -> None:
        api: Api = self.node.api
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": NODE_NAME, "labels": dict(NODE_LABELS)},
            "spec": {},
        }
        if await api.get(NODE, None, NODE_NAME) is None:
            await api.create(NODE, body)
        status = {
            "capacity": dict(NODE_CAPACITY),
            "allocatable": dict(NODE_CAPACITY),
            "addresses": [
                {"type": "InternalIP", "address": self.node.cluster.host_ip},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "nodeInfo": {
                "kubeletVersion": "v1.33.0-facepipe-sim",
                "containerRuntimeVersion": "facepipe-sim://1",
            },
        }
        await api.patch(NODE, None, NODE_NAME, {"status": status}, subresource="status")

    def _pod_event(self, event: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if event == "DELETED":
            if worker is not None:
                worker.deleted()
            return
        if worker is not None:
            worker.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return  # finished before this kubelet saw it
        worker = self.workers[uid] = PodWorker(self.node, pod)
        worker.update(pod)  # already marked for deletion: stop at once
        task = asyncio.get_running_loop().create_task(worker.run(), name=f"pod {pod['metadata']['name']}")
        self._tasks[uid] = task
        task.add_done_callback(lambda _t, uid=uid: self._forget(uid))

    def _forget(self, uid: str) -> None:
        self.workers.pop(uid, None)
        task = self._tasks.pop(uid, None)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("pod worker failed", exc_info=task.exception())

    async def stop(self) -> None:
        for worker in list(self.workers.values()):
            worker.gone = True  # the API may be going away: write nothing more
            worker.request_stop(min(worker.grace, SHUTDOWN_GRACE))
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
