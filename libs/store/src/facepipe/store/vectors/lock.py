"""One process at a time per embedded store folder, and a refusal that names the holder.

Qdrant Edge already refuses a second open of a shard (its WAL lock), but its message
("failed to open WAL ... WouldBlock") names neither the store nor who holds it. This lock
is taken first, on the store's root folder, and the holder writes its pid and command
line into the lock file, so a second opener (another process, or the same process
opening the folder twice) is told which folder and which process. ``flock`` locks die
with their process, so a killed holder never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO

LOCK_NAME = ".facepipe.lock"


class StoreInUseError(RuntimeError):
    """The embedded store is already open (by another process, or by this one)."""


def describe_holder(lock_path: Path) -> str:
    """Who holds the lock, as far as the lock file says (its holder writes it once locked)."""
    try:
        holder = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder.get("pid"):
        return "another process (it has not said which yet)"
    same = " (this process)" if holder["pid"] == os.getpid() else ""
    return (
        f"process {holder['pid']}{same} on {holder.get('host', '?')}, "
        f"started {holder.get('since', '?')}: {holder.get('command', '?')}"
    )


def in_use_message(root: Path, holder: str) -> str:
    return (
        f"the embedded vector store {root} is already open by {holder}. It admits one process at a "
        "time: stop that process, point QDRANT_PATH at another folder, or use a Qdrant server "
        "(QDRANT_URL). In local mode the indexer and the ops-api share one process for this reason."
    )


class StoreLock:
    """An exclusive ``flock`` on ``<root>/.facepipe.lock``, held until :meth:`release`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / LOCK_NAME
        root.mkdir(parents=True, exist_ok=True)
        handle: IO[str] = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's life
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StoreInUseError(in_use_message(root, describe_holder(self.path))) from None
        handle.seek(0)
        handle.truncate()
        handle.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": " ".join(sys.argv) or sys.executable,
                }
            )
        )
        handle.flush()
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        if self._handle is None:
            return
        with contextlib.suppress(OSError):
            self._handle.truncate(0)
        self._handle.close()  # closing the descriptor drops the flock
        self._handle = None
