"""One container of a pod: its processes across restarts, its probes and its reported state.

:class:`ContainerProcess` is one start: the launcher (facepipe.sim.launcher) as the
container's supervisor, started from the event loop's thread (a long-lived thread, which
the launcher's parent-death signal follows). :class:`ContainerRunner` is the kubelet's
loop for one container: start, probe (startup, then liveness and readiness), record the
exit, and restart by the pod's restartPolicy with the kubelet's back-off (10 s doubling to
5 min, reset after 10 min of running); stop: SIGTERM, then SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facepipe.sim.images import python_for_images
from facepipe.sim.launcher import EXIT_SETUP_FAILED
from facepipe.sim.podspec import ConfigError, Identity
from facepipe.sim.probes import ProbeSchedule, ProbeTarget, run_probe
from facepipe.sim.rootfs import LAUNCHER

log = logging.getLogger("facepipe.sim.kubelet")
MAX_BACKOFF = 300.0
BACKOFF_RESET_AFTER = 600.0


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LaunchSpec:
    """Everything one start of the container needs (built by the pod worker for each start)."""

    plan: dict[str, Any]  # the launcher's plan, less the file paths
    identity: Identity
    env: dict[str, str]


class ContainerProcess:
    def __init__(self, folder: Path, log_path: Path) -> None:
        self.folder = folder
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.init_pid = 0

    async def start(self, plan: dict[str, Any], *, own_root: bool = True) -> None:
        """Start the supervisor; ``own_root=False``: the host's tree (with the plan's binds over it)."""
        for name in ("pid", "reason"):
            (self.folder / name).unlink(missing_ok=True)
        root = self.folder / "root"
        root.mkdir(parents=True, exist_ok=True)
        plan = {
            **plan,
            "rootfs": str(root) if own_root else None,
            "pidfile": str(self.folder / "pid"),
            "reasonfile": str(self.folder / "reason"),
        }
        (self.folder / "plan.json").write_text(json.dumps(plan))
        with open(self.log_path, "ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                python_for_images(), "-I", str(LAUNCHER), "container", str(self.folder / "plan.json"),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    async def wait_started(self, timeout: float = 60.0) -> int:
        """The container's first process (host pid), once the supervisor has forked it; 0 if it failed."""
        deadline = time.monotonic() + timeout
        pidfile = self.folder / "pid"
        assert self.process is not None
        while time.monotonic() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                self.init_pid = int(pidfile.read_text())
                return self.init_pid
            if self.process.returncode is not None:
                return 0
            await asyncio.sleep(0.02)
        return 0

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        return 128 - code if code < 0 else code  # killed supervisor: 128 + signal, as a runtime reports

    def setup_failure(self) -> str:
        reason = self.folder / "reason"
        return reason.read_text() if reason.exists() else ""

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def stop(self, grace: float) -> None:
        """SIGTERM (passed on to PID 1), then SIGKILL after ``grace`` seconds."""
        if self.process is None or self.process.returncode is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace)
        except TimeoutError:
            self.signal(signal.SIGKILL)  # the supervisor's death takes PID 1 and its namespace along
            await self.process.wait()


@dataclass
class ContainerState:
    """What the pod status says of one container."""

    name: str
    image: str
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    exit_code: int | None = None  # of the last run
    pid: int = 0  # host pid of the running process (the pod's PIDs annotation, for CPU metrics)

    def as_status(self, pod_uid: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "imageID": f"sim://{self.image}",
            "containerID": f"sim://{pod_uid}/{self.name}/{self.restart_count}",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


class ContainerRunner:
    """The kubelet's loop for one container (``init``: run to completion once, retried on failure)."""

    def __init__(
        self,
        container: Mapping[str, Any],
        folder: Path,
        *,
        prepare: Callable[[Mapping[str, Any]], LaunchSpec],
        restart_policy: str,
        pod_ip: str,
        init: bool,
        on_change: Callable[[], None],
        base_backoff: float,
        on_exit: Callable[[ContainerState], None] = lambda _state: None,
    ) -> None:
        self.container = container
        self.folder = folder
        self.prepare = prepare
        self.restart_policy = restart_policy
        self.pod_ip = pod_ip
        self.init = init
        self.on_change = on_change
        self.on_exit = on_exit
        self.base_backoff = base_backoff
        self.status = ContainerState(container["name"], container.get("image", ""))
        self.process: ContainerProcess | None = None
        self.stopping = asyncio.Event()
        self.grace = 30.0
        self.finished = asyncio.Event()  # no further start will happen

    def _set(self, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(self.status, key, value)
        self.on_change()

    async def run(self) -> bool:
        """Until stopped (or, for an init container or restartPolicy, done); True if it exited 0."""
        backoff = self.base_backoff
        try:
            while not self.stopping.is_set():
                try:
                    launch = self.prepare(self.container)
                except ConfigError as exc:
                    waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
                    self._set(state={"waiting": waiting})
                    await self._pause(min(backoff, 10.0))
                    continue
                started_at = time.monotonic()
                code = await self._run_once(launch)
                if self.stopping.is_set():
                    return code == 0
                again = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
                if self.init:
                    again = code != 0 and self.restart_policy != "Never"
                if not again:
                    return code == 0
                if time.monotonic() - started_at > BACKOFF_RESET_AFTER:
                    backoff = self.base_backoff
                waiting = {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {backoff:g}s restarting failed container={self.status.name}",
                }
                self._set(last_state=self.status.state, state={"waiting": waiting})
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                self._set(restart_count=self.status.restart_count + 1)
            return False
        finally:
            self.finished.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _run_once(self, launch: LaunchSpec) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        process = self.process = ContainerProcess(self.folder, self.folder.parent / f"{self.status.name}.log")
        started = now()
        await process.start(launch.plan)
        init_pid = await process.wait_started()
        if self.stopping.is_set():  # stopped while starting
            await process.stop(self.grace)
        if init_pid:
            self._set(state={"running": {"startedAt": started}}, exit_code=None, pid=init_pid)
        probes = asyncio.ensure_future(self._probe_all(launch, init_pid)) if init_pid else None
        code = await process.wait()
        if probes is not None:
            probes.cancel()
            await asyncio.gather(probes, return_exceptions=True)
        failure = process.setup_failure() if code == EXIT_SETUP_FAILED else ""
        if failure:
            reason, message, code = "StartError", failure, 128
        else:
            reason = "Completed" if code == 0 else "Error"
            message = ""
        terminated = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}
        if message:
            terminated["message"] = message
        self._set(state={"terminated": terminated}, ready=False, started=False, exit_code=code, pid=0)
        self.on_exit(self.status)
        return code

    async def stop(self, grace: float) -> None:
        self.grace = grace
        self.stopping.set()
        if self.process is not None:
            await self.process.stop(grace)

    # -- probes --

    async def _probe_all(self, launch: LaunchSpec, init_pid: int) -> None:
        target = ProbeTarget(self.container, self.pod_ip, init_pid, launch.identity, launch.env)
        startup = self.container.get("startupProbe")
        if startup and not await self._startup(startup, target):
            log.info("container %s failed its startup probe: restarting", self.status.name)
            await self._kill_for_restart()
            return
        self._set(started=True)
        readiness = self.container.get("readinessProbe")
        liveness = self.container.get("livenessProbe")
        if not readiness and not self.init:
            self._set(ready=True)
        loops: list[Awaitable[None]] = []
        if readiness and not self.init:
            loops.append(self._readiness(readiness, target))
        if liveness:
            loops.append(self._liveness(liveness, target))
        await asyncio.gather(*loops)

    async def _startup(self, probe: Mapping[str, Any], target: ProbeTarget) -> bool:
        schedule = ProbeSchedule.of(probe)
        await asyncio.sleep(schedule.initial_delay)
        failures = 0
        while True:
            ok, _ = await run_probe(probe, target)
            if ok:
                return True
            failures += 1
            if failures >= schedule.failure_threshold:
                return False
            await asyncio.sleep(schedule.period)

    async def _readiness(self, probe: Mapping[str, Any], target: ProbeTarget) -> None:
        schedule = ProbeSchedule.of(probe)
        await asyncio.sleep(schedule.initial_delay)
        successes = failures = 0
        while True:
            ok, message = await run_probe(probe, target)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if ok and successes >= schedule.success_threshold and not self.status.ready:
                self._set(ready=True)
            elif not ok and failures >= schedule.failure_threshold and self.status.ready:
                log.info("container %s not ready: %s", self.status.name, message)
                self._set(ready=False)
            await asyncio.sleep(schedule.period)

    async def _liveness(self, probe: Mapping[str, Any], target: ProbeTarget) -> None:
        schedule = ProbeSchedule.of(probe)
        await asyncio.sleep(schedule.initial_delay)
        failures = 0
        while True:
            ok, message = await run_probe(probe, target)
            failures = 0 if ok else failures + 1
            if failures >= schedule.failure_threshold:
                log.info("container %s failed liveness (%s): restarting", self.status.name, message)
                await self._kill_for_restart()
                return
            await asyncio.sleep(schedule.period)

    async def _kill_for_restart(self) -> None:
        if self.process is not None:
            await self.process.stop(self.grace)
