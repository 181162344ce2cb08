"""The Qdrant REST stand-in (facepipe.sim.qdrant_rest) in a thread, for tests that need a vector
store "server" (tests/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from facepipe.cli.ports import serve_in_thread


@contextlib.contextmanager
def rest_stand_in(path: Path) -> Iterator[str]:
    """The Qdrant REST stand-in in a thread, on a socket bound for it (no race); yields its URL."""
    from facepipe.sim.qdrant_rest import build_app

    with serve_in_thread(build_app(str(path))) as url:
        yield url
