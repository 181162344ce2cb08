"""The emulator served over HTTP from a background thread, and a kubeconfig that points at it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable
from pathlib import Path

import kmock

from facepipe.sim.emulator.api import FacePipeEmulator


class EmulatorServer:
    """The emulator served on 127.0.0.1 from a background thread with its own event loop.

    ``with EmulatorServer(crd_paths=[...]) as server: server.url``. Everything else in the
    process (Kopf, kubectl, tests) talks to it over HTTP, exactly as to an API server.
    """

    def __init__(
        self,
        crd_paths: Iterable[Path] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keda: bool = True,
        monitoring: bool = True,
    ) -> None:
        self._crd_paths = list(crd_paths)
        self._host = host
        self._port = port or None
        self._keda = keda
        self._monitoring = monitoring
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.url = ""
        self.emulator: FacePipeEmulator | None = None

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error}") from self._error
        if not self.url:
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        return self.url

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = FacePipeEmulator()
        emulator.register_defaults(self._crd_paths, keda=self._keda, monitoring=self._monitoring)
        async with emulator, kmock.Server(emulator, host=self._host, port=self._port) as server:
            self.emulator = emulator
            self.url = f"http://{server.host}:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconfig(path: Path, server_url: str, namespace: str = "default") -> Path:
    """A kubeconfig for kubectl, Kopf and the kubernetes client (token auth, plain HTTP)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "facepipe-sandbox", "cluster": {"server": server_url}}],
        "users": [{"name": "sandbox", "user": {"token": "sandbox"}}],
        "contexts": [
            {
                "name": "facepipe-sandbox",
                "context": {"cluster": "facepipe-sandbox", "user": "sandbox", "namespace": namespace},
            }
        ],
        "current-context": "facepipe-sandbox",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
