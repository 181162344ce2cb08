"""The vector index backends the contract suite runs against, and a process that holds a store.

- ``edge``: the embedded store (Qdrant Edge) as ``VectorIndex(settings)`` opens it locally.
- ``server-local``: the server backend (qdrant-client) over qdrant-client's local mode
  (``QdrantClient(path=...)``), which speaks the same client API as a server; it keeps no
  payload indexes.
- ``server-rest``: the server backend over HTTP against the Qdrant REST stand-in
  (``facepipe.sim.qdrant_rest``, Qdrant Edge behind Qdrant's REST API), which keeps them.

``python tests/store/vectorkit.py KIND PATH COLLECTION`` is the holder process of the
crash and second-opener tests: it opens the store, prints ``open``, then upserts batches
of faces forever, printing ``acked N`` after batch N's upsert returned.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facepipe.core.settings import Settings, load_settings
from facepipe.store.vectors import FacePoint, VectorIndex

DIM = 16
FACES_PER_BATCH = 20
KINDS = ("edge", "server-local", "server-rest")


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def batch_points(number: int) -> list[FacePoint]:
    """Batch ``number`` of the holder: one image, FACES_PER_BATCH faces with known vectors."""
    return [
        FacePoint("t", f"batch{number}", face, unit(number * 1000 + face), {"site": "s"})
        for face in range(FACES_PER_BATCH)
    ]


@dataclass
class Backend:
    """How to open one backend's index on the same storage again and again."""

    kind: str
    settings: Settings
    opener: Callable[[], VectorIndex]
    exclusive: bool  # a second opener is refused while one is open
    keeps_indexes: bool  # the store reports the payload indexes it was asked for
    path: Path | None = None  # the folder a holder process opens (embedded stores)

    def open(self) -> VectorIndex:
        return self.opener()


def local_mode_opener(settings: Settings, path: Path) -> Callable[[], VectorIndex]:
    def open_() -> VectorIndex:
        from qdrant_client import QdrantClient

        from facepipe.store.vectors.server import ServerVectorIndex

        return ServerVectorIndex(
            settings, client=QdrantClient(path=str(path), force_disable_check_same_thread=True)
        )

    return open_


def make_backend(kind: str, root: Path, url: str = "") -> Backend:
    if kind == "edge":
        settings = load_settings(
            qdrant_url="embedded", qdrant_path=root / "qdrant", qdrant_collection="faces"
        )
        return Backend(
            kind,
            settings,
            lambda: VectorIndex(settings),
            exclusive=True,
            keeps_indexes=True,
            path=root / "qdrant",
        )
    if kind == "server-local":
        settings = load_settings(qdrant_url="http://unused", qdrant_collection="faces")
        opener = local_mode_opener(settings, root / "local")
        return Backend(kind, settings, opener, exclusive=True, keeps_indexes=False, path=root / "local")
    if kind == "server-rest":
        settings = load_settings(qdrant_url=url, qdrant_collection="faces")
        return Backend(kind, settings, lambda: VectorIndex(settings), exclusive=False, keeps_indexes=True)
    raise ValueError(kind)


class Holder:
    """A real child process holding a store and writing to it (see the module doc)."""

    def __init__(self, kind: str, path: Path, collection: str = "faces") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, kind, str(path), collection],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.acked = -1

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith("acked "):
                self.acked = int(line.split()[1])
            if predicate(line):
                return
        stderr = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise TimeoutError(f"holder did not get there (exit {self.proc.poll()}): {stderr[-3000:]}")

    def kill9(self) -> int:
        """SIGKILL mid-write; returns the last batch whose upsert had returned."""
        self.proc.kill()
        self.proc.wait(timeout=60)
        while not self.lines.empty():
            line = self.lines.get()
            if line.startswith("acked "):
                self.acked = int(line.split()[1])
        return self.acked


def _hold(kind: str, path: Path, collection: str) -> None:
    if kind == "edge":
        settings = load_settings(qdrant_url="embedded", qdrant_path=path, qdrant_collection=collection)
        index = VectorIndex(settings)
    else:
        index = local_mode_opener(
            load_settings(qdrant_url="http://unused", qdrant_collection=collection), path
        )()
    index.ensure_collection(DIM)
    print("open", flush=True)
    number = 0
    while True:
        index.upsert(batch_points(number))
        print(f"acked {number}", flush=True)
        number += 1


if __name__ == "__main__":
    _hold(sys.argv[1], Path(sys.argv[2]), sys.argv[3])
