"""One pod on the simulated node, from admission to deletion (the kubelet's pod worker).

Admission: the one-node scheduler's verdict (else Pending, Unschedulable), binding
(``spec.nodeName``), then :func:`podspec.check_pod` (else every container waits with
``CreateContainerError`` and the reason). Images: each container's image must be one a
recipe builds (else ``ErrImagePull`` / ``ImagePullBackOff``); its environment is built
meanwhile (``ContainerCreating``). Then the sandbox (network namespace, address,
/etc/hosts), the volumes, the init containers one by one to completion, and the
containers together. Deletion (``deletionTimestamp``): every container gets SIGTERM and
the grace period, then SIGKILL; the pod object is then removed (delete with no grace).
The status (phase, conditions, podIP, container states) is written as it changes, and the
annotation ``sim.facepipe.io/pids`` names the running containers' processes (the simulation's
metrics-server reads their CPU from it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facepipe.sim import podenv, podspec, rootfs
from facepipe.sim.apiclient import POD, Api, ApiError
from facepipe.sim.containers import ContainerRunner, ContainerState, LaunchSpec, now
from facepipe.sim.imagecache import ImageMissing, ImageResolver
from facepipe.sim.images import RecipeError
from facepipe.sim.podnet import ClusterNetwork, start_holder, stop_holder
from facepipe.sim.podstatus import PodStatus
from facepipe.sim.resource_metrics import PIDS_ANNOTATION
from facepipe.sim.services import ClusterDns
from facepipe.sim.volumes import ClaimBinder, PodVolumes, VolumeNotReady

log = logging.getLogger("facepipe.sim.kubelet")


@dataclass(frozen=True)
class Termination:
    """One container run that ended: what the tests (and a curious user) can check afterwards."""

    namespace: str
    pod: str
    container: str
    exit_code: int
    reason: str
    stop_requested: bool  # the pod was being deleted (SIGTERM sent), not a crash
    finished_at: float  # time.time()
    init: bool = False  # an init container (runs to completion before the others start)


@dataclass
class Node:
    """What every pod worker shares: the API, the network, images, names, the cluster's objects."""

    api: Api
    network: ClusterNetwork
    images: ImageResolver
    cluster: podenv.Cluster
    dns: ClusterDns
    claims: ClaimBinder
    folder: Path  # pods' folders
    claims_folder: Path
    base_backoff: float = 10.0
    terminations: list[Termination] = field(default_factory=list)


class PodWorker:
    def __init__(self, node: Node, pod: dict[str, Any]) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.namespace, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.folder = node.folder / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.init_runners: list[ContainerRunner] = []
        self.runners: list[ContainerRunner] = []
        self.waiting: dict[str, dict[str, Any]] = {}  # containers not yet handed to a runner
        self.pod_ip = ""
        self.host_ip = node.cluster.host_ip
        self.started_at = ""
        self.scheduled: tuple[bool, str] = (False, "")
        self.initialized = False
        self.sandbox: asyncio.subprocess.Process | None = None
        self.stop_requested = asyncio.Event()
        self.grace = float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        self.gone = False  # the object was removed from the API: write nothing more
        self.done = asyncio.Event()
        self._dirty = asyncio.Event()
        self._status = PodStatus()
        self._hosts: Path | None = None
        self._sandbox_pid = 0

    # -- events from the kubelet --

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") and not self.stop_requested.is_set():
            self.request_stop(float(meta.get("deletionGracePeriodSeconds", self.grace)))

    def deleted(self) -> None:
        self.gone = True
        self.request_stop(self.grace)

    def request_stop(self, grace: float) -> None:
        self.grace = grace
        self.stop_requested.set()

    # -- life --

    async def run(self) -> None:
        writer = asyncio.ensure_future(self._status_writer())
        lifecycle = asyncio.ensure_future(self._lifecycle())
        try:
            await self.stop_requested.wait()
            await asyncio.gather(*(r.stop(self.grace) for r in self.init_runners + self.runners))
            # Stopped runners return by themselves (and record how their containers ended); what
            # is still going after that (an image build, a wait for a volume) is cancelled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(lifecycle), 5)
            lifecycle.cancel()
            await asyncio.gather(lifecycle, return_exceptions=True)
            # The start starts no container after the stop request (_lifecycle), but one it had
            # in hand then, or a runner cancelled with it, may have a process: stop every one,
            # or it would run on without its pod (a cancelled runner does not stop its process).
            await asyncio.gather(*(r.stop(self.grace) for r in self.init_runners + self.runners))
            self._changed()
            await asyncio.sleep(0)  # let the writer see the final states
        finally:
            await self._teardown()
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if not self.gone:
                with contextlib.suppress(ApiError):
                    await self.node.api.delete(POD, self.namespace, self.name, grace=0)
            self.done.set()

    async def _lifecycle(self) -> None:
        """Admission to running containers; nothing is started once the pod is being deleted
        (a deletion can come at any step: the runners it stopped are those that existed)."""
        stopping = self.stop_requested.is_set
        try:
            if not await self._admit() or stopping():
                return
            recipes = await self._pull_images()
            if recipes is None or stopping():
                return
            await self._start_sandbox()
            volumes = await self._prepare_volumes()
            if volumes is None:
                return
            restart_policy = (self.pod.get("spec") or {}).get("restartPolicy", "Always")
            for container in podspec.containers(self.pod, init=True):
                if stopping():
                    return
                runner = self._runner(container, recipes, volumes, restart_policy, init=True)
                self.init_runners.append(runner)
                if not await runner.run():
                    return  # failed for good (restartPolicy Never): the pod is Failed
            if stopping():  # an init container that ended with 0 when it was told to stop
                return
            self.initialized = True
            self._changed()
            self.runners = [
                self._runner(c, recipes, volumes, restart_policy, init=False)
                for c in podspec.containers(self.pod, init=False)
            ]
            self.waiting.clear()
            await asyncio.gather(*(r.run() for r in self.runners))
            self._changed()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a host failure: say so on the pod, never die silently
            log.exception("pod %s/%s", self.namespace, self.name)
            self._wait_all("CreateContainerError", f"facepipe-sim: {type(exc).__name__}: {exc}")

    async def _admit(self) -> bool:
        verdict = podspec.schedule(self.pod)
        if verdict is not None:
            self.scheduled = (False, verdict)
            self._changed()
            return False
        if (self.pod.get("spec") or {}).get("nodeName") != podspec.NODE_NAME:
            self.pod = await self.node.api.patch(
                POD, self.namespace, self.name, {"spec": {"nodeName": podspec.NODE_NAME}}
            )
        self.scheduled = (True, "")
        self.started_at = now()
        try:
            podspec.check_pod(self.pod)
        except podspec.Unsupported as exc:
            self._wait_all("CreateContainerError", f"facepipe-sim cannot honour this pod: {exc}")
            return False
        self._wait_all("ContainerCreating", "")
        return True

    def _wait_all(self, reason: str, message: str) -> None:
        waiting = {"reason": reason, **({"message": message} if message else {})}
        for container in podspec.containers(self.pod, init=True) + podspec.containers(self.pod, init=False):
            if not any(r.status.name == container["name"] for r in self.init_runners + self.runners):
                self.waiting[container["name"]] = waiting
        self._changed()

    async def _pull_images(self) -> dict[str, Any] | None:
        everyone = podspec.containers(self.pod, init=True) + podspec.containers(self.pod, init=False)
        recipes: dict[str, Any] = {}
        for container in everyone:
            image = container.get("image", "")
            try:
                recipe = self.node.images.recipe(image)
            except ImageMissing as exc:
                self.waiting[container["name"]] = {"reason": "ErrImagePull", "message": str(exc)}
                self._changed()
                await asyncio.sleep(1)
                self.waiting[container["name"]] = {"reason": "ImagePullBackOff", "message": str(exc)}
                self._changed()
                return None
            try:
                venv = await asyncio.to_thread(self.node.images.environment, image)
            except RecipeError as exc:
                self.waiting[container["name"]] = {"reason": "ErrImagePull", "message": str(exc)[-2000:]}
                self._changed()
                return None
            recipes[container["name"]] = (recipe, venv)
        return recipes

    async def _start_sandbox(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sandbox, sandbox_pid = await start_holder(self.name)
        self.pod_ip = self.node.network.allocate_pod_ip()
        await asyncio.to_thread(self.node.network.attach, sandbox_pid, self.pod_ip)
        self._sandbox_pid = sandbox_pid
        spec = self.pod.get("spec") or {}
        self._hosts = self.node.dns.register(
            self.folder / "hosts", self.namespace, self.pod_ip, self.name, spec.get("hostAliases")
        )
        (self.folder / "hostname").write_text(self.name + "\n")
        self._changed()

    async def _prepare_volumes(self) -> PodVolumes | None:
        """The pod's volumes, once they can be set up; None when the pod is deleted first."""
        while not self.stop_requested.is_set():
            volumes = PodVolumes(
                self.pod, self.folder, self.node.claims_folder, self.node.cluster, self.pod_ip
            )
            try:
                await asyncio.to_thread(volumes.prepare, self.node.claims.exists)
            except (VolumeNotReady, podspec.ConfigError) as exc:
                self._wait_all("ContainerCreating", f"MountVolume.SetUp failed: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_requested.wait(), 2)
                continue
            return volumes
        return None

    def _runner(
        self,
        container: Mapping[str, Any],
        recipes: dict[str, Any],
        volumes: PodVolumes,
        policy: str,
        *,
        init: bool,
    ) -> ContainerRunner:
        recipe, venv = recipes[container["name"]]
        self.waiting.pop(container["name"], None)

        def prepare(spec: Mapping[str, Any]) -> LaunchSpec:
            env = podenv.container_env(self.pod, spec, recipe, self.node.cluster, self.pod_ip)
            who = podspec.identity(self.pod, spec, recipe)
            mounts = [
                *rootfs.base_system(),
                *rootfs.image_files(recipe, venv),
                *rootfs.accounts_files(recipe, self.folder / "etc" / spec["name"]),
                {
                    "kind": "bind",
                    "source": str(self.folder / "hosts"),
                    "target": "/etc/hosts",
                    "readonly": True,
                },
                {
                    "kind": "bind",
                    "source": str(self.folder / "hostname"),
                    "target": "/etc/hostname",
                    "readonly": True,
                },
                *volumes.mounts(spec),
            ]
            security = spec.get("securityContext") or {}
            plan = {
                "sandbox_pid": self._sandbox_pid,
                "mounts": rootfs.ordered(mounts),
                "workdir": podspec.working_dir(spec, recipe),
                "uid": who.uid,
                "gid": who.gid,
                "groups": list(who.groups),
                "env": env,
                "argv": podspec.command(spec, recipe, env),
                "readonly_root": bool(security.get("readOnlyRootFilesystem")),
                "no_new_privileges": security.get("allowPrivilegeEscalation") is False,
                "drop_all_capabilities": podspec.drops_all_capabilities(spec),
            }
            return LaunchSpec(plan, who, env)

        folder = self.folder / ("init" if init else "containers") / container["name"]
        runner = ContainerRunner(
            container,
            folder,
            prepare=prepare,
            restart_policy=policy,
            pod_ip=self.pod_ip,
            init=init,
            on_change=self._changed,
            base_backoff=self.node.base_backoff,
            on_exit=lambda state: self._record_exit(state, init=init),
        )
        runner.grace = self.grace  # a liveness restart stops the container as a deletion would
        return runner

    def _record_exit(self, state: ContainerState, *, init: bool) -> None:
        terminated = state.state.get("terminated") or {}
        self.node.terminations.append(
            Termination(
                self.namespace,
                self.name,
                state.name,
                int(terminated.get("exitCode", -1)),
                str(terminated.get("reason", "")),
                self.stop_requested.is_set(),
                time.time(),
                init,
            )
        )

    async def _teardown(self) -> None:
        await stop_holder(self.sandbox)
        if self._hosts is not None:
            self.node.dns.unregister(self._hosts)
        if self.pod_ip:
            self.node.network.release_pod_ip(self.pod_ip)
        # emptyDir and the projected files go with the pod; logs stay beside (folder/../logs).
        volumes = self.folder / "volumes"
        if volumes.exists():
            await asyncio.to_thread(shutil.rmtree, volumes, True)

    # -- status --

    def _changed(self) -> None:
        self._dirty.set()

    async def _status_writer(self) -> None:
        written: dict[str, Any] | None = None
        pids_written = ""  # nothing to annotate until a container runs
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            status = self.status()
            pids = ",".join(str(r.status.pid) for r in self.runners if r.status.pid)
            if (status != written or pids != pids_written) and not self.gone:
                try:
                    if pids != pids_written:
                        annotations = {"metadata": {"annotations": {PIDS_ANNOTATION: pids or None}}}
                        await self.node.api.patch(POD, self.namespace, self.name, annotations)
                        pids_written = pids
                    await self.node.api.patch(
                        POD, self.namespace, self.name, {"status": status}, subresource="status"
                    )
                    written = status
                except ApiError as exc:
                    if exc.status == 404:
                        return
                    log.warning("pod %s/%s status: %s", self.namespace, self.name, exc)
                    self._dirty.set()
            await asyncio.sleep(0.1)

    def status(self) -> dict[str, Any]:
        return self._status.build(self)
