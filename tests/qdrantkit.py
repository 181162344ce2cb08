"""The Qdrant REST stand-in (facepipe.sim.qdrant_rest) in a thread, for tests that need a vector
store "server" (tests/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def rest_stand_in(path: Path) -> Iterator[str]:
    """The Qdrant REST stand-in on a free port in a thread; yields its URL."""
    import uvicorn

    from facepipe.sim.qdrant_rest import build_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(build_app(str(path)), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the Qdrant stand-in did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
