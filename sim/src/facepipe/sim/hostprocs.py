"""Processes the simulation runs on the host, outside any pod, and how none of them outlives it.

The guardian (``launcher.py guardian``) holds a pipe from the simulation and the process
groups to kill when that pipe closes: however the simulation ends, even by SIGKILL, its
backing servers and its operator go with it. Pods need no guardian: each container's
supervisor dies with the simulation's event-loop thread (parent-death signal), and the
container's PID namespace with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from facepipe.sim.containers import ContainerProcess
from facepipe.sim.images import python_for_images
from facepipe.sim.rootfs import LAUNCHER


class Guardian:
    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            python_for_images(), "-I", str(LAUNCHER), "guardian", stdin=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip

    def _send(self, line: str) -> None:
        if self._process is not None and self._process.stdin is not None:
            self._process.stdin.write(line.encode())

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    async def stop(self) -> None:
        if self._process is None or self._process.stdin is None:
            return
        self._process.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._process.wait(), 10)


async def start_host_process(
    folder: Path, argv: list[str], env: dict[str, str], *, cwd: Path, binds: list[dict[str, Any]]
) -> ContainerProcess:
    """A host process in its own mount and PID namespaces, with files bound over the host's."""
    folder.mkdir(parents=True, exist_ok=True)
    process = ContainerProcess(folder, folder / "output.log")
    plan = {"mounts": binds, "workdir": str(cwd), "uid": 0, "gid": 0, "groups": [], "env": env, "argv": argv}
    await process.start(plan, own_root=False)
    await process.wait_started()
    return process
