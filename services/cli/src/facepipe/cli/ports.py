"""Ports for the servers that local mode, the simulation and the tests start, without a race.

Picking a free port and letting a server bind it later is a race: whatever starts in between
(SeaweedFS alone opens a dozen ports) may take it, and a readiness check that only connects
then talks to the wrong process. So:

- A server that can take a socket gets one already bound and listening
  (:func:`listening_socket`): uvicorn in a thread with ``sockets=[...]``
  (:func:`serve_in_thread`), a child with ``pass_fds`` and ``--fd N``. No race at all.
- A server that binds its own ports (redis-server, weed, prometheus) is up only when those
  ports are held by its own process tree and it answers its protocol (:func:`launch`). A port
  held by another process, or a log that says so, raises :class:`PortTaken`, and
  :func:`with_free_ports` starts it again on new ports.
- A client test that needs "a port where nothing answers" holds one bound but not listening
  (:func:`refused_port`): connecting is refused for as long as it is held.

A server that cannot start raises :class:`ServerStartError` as soon as it exits, with the
tail of its log and the log's path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

LOOPBACK = "127.0.0.1"
BIND_ERRORS = ("address already in use", "port allocation failed")  # the latter: weed's words
T = TypeVar("T")
_handed_out: set[int] = set()  # candidates this process gave already: never twice


class ServerStartError(RuntimeError):
    """A server did not start; the message holds the tail of its log."""


class PortTaken(ServerStartError):
    """A port the server needed is held by another process (``port`` None: one of its ports)."""

    def __init__(self, port: int | None, message: str) -> None:
        super().__init__(message)
        self.port = port


def candidate_port(offsets: Sequence[int] = (0,)) -> int:
    """A port P with P+offset free for every offset right now, never handed out before by this
    process. Only a candidate: another process may take it before the server binds it, which
    :func:`launch` notices and :func:`with_free_ports` retries."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        ports = [port + offset for offset in offsets]
        if max(ports) > 65535 or _handed_out.intersection(ports) or not all(map(_bindable, ports)):
            continue
        _handed_out.update(ports)
        return port
    raise RuntimeError(f"no free port block {tuple(offsets)} on {LOOPBACK}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def listening_socket(host: str = LOOPBACK, port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: any free port) and listening, to hand to a server."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortTaken(port, f"{host}:{port}: {exc} (held by {port_owner(port)})") from None
        raise
    return sock


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where every connection is refused until the block ends: bound, never
    listening, and without SO_REUSEADDR so no server can bind it meanwhile."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        yield int(sock.getsockname()[1])


def port_owner(port: int) -> str:
    """Who listens on ``port``, for an error message."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                with contextlib.suppress(psutil.Error):
                    return f"pid {conn.pid}: {' '.join(psutil.Process(conn.pid).cmdline())[:200]}"
                return f"pid {conn.pid}"
    return "another process"


def listened_by_tree(pid: int) -> set[int]:
    """The TCP ports that process ``pid`` and its descendants listen on."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    ports: set[int] = set()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            ports.update(
                c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
            )
    return ports


def _answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


def log_tail(log_path: Path, start: int = 0, chars: int = 4000) -> str:
    """The end of what ``log_path`` got after byte ``start``."""
    with contextlib.suppress(OSError), open(log_path, "rb") as log:
        log.seek(max(start, log.seek(0, os.SEEK_END) - chars))
        return log.read().decode(errors="replace")
    return ""


def _bind_failed(log: str, ports: Sequence[int]) -> tuple[bool, int | None]:
    """Whether the log says a bind failed, and which of ``ports`` it names (None: not said)."""
    lines = [line for line in log.splitlines() if any(error in line.lower() for error in BIND_ERRORS)]
    return bool(lines), next((p for p in ports for line in lines if re.search(rf"\b{p}\b", line)), None)


def wait_serving(
    proc: subprocess.Popen,
    name: str,
    log_path: Path,
    ports: Sequence[int],
    ready: Callable[[], bool] | None = None,
    timeout: float = 60.0,
    log_start: int = 0,
) -> None:
    """Until ``proc``'s process tree listens on every one of ``ports`` on loopback and
    ``ready()`` (its protocol's check) is true, with ``proc`` still alive after.

    Raises PortTaken when one of ``ports`` is held by another process or the log says a bind
    failed; ServerStartError when ``proc`` exits or ``timeout`` passes, with the log's tail."""
    deadline = time.monotonic() + timeout
    ours: set[int] = set()  # a port the tree listens on stays its own while the tree lives
    last, pause = "nothing listened", 0.05

    def failed(what: str, taken: bool = False, port: int | None = None) -> ServerStartError:
        message = f"{name} {what}; its log {log_path} ends with:\n{log_tail(log_path, log_start)}"
        return PortTaken(port, message) if taken else ServerStartError(message)

    while True:
        if proc.poll() is not None:
            taken, port = _bind_failed(log_tail(log_path, log_start), ports)
            where = f"{LOOPBACK}:{list(ports)}"
            raise failed(f"exited with code {proc.returncode} before serving on {where}", taken, port)
        if not ours.issuperset(ports):
            ours |= listened_by_tree(proc.pid)
        if ours.issuperset(ports):
            try:
                if (ready is None or ready()) and proc.poll() is None:
                    return
                last = "not ready"
            except Exception as exc:  # the protocol check's own error: not ready yet
                last = f"{type(exc).__name__}: {exc}"
        for port in set(ports) - ours:
            if _answers(port) and port not in listened_by_tree(proc.pid):
                raise failed(f"cannot have port {port}: held by {port_owner(port)}", True, port)
        if time.monotonic() > deadline:
            raise failed(f"not serving on {LOOPBACK}:{list(ports)} within {timeout:.0f}s ({last})")
        time.sleep(pause)
        pause = min(0.5, pause * 1.5)


def launch(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    ports: Sequence[int],
    ready: Callable[[], bool] | None = None,
    timeout: float = 60.0,
    handed: socket.socket | None = None,
    **popen: Any,
) -> subprocess.Popen:
    """Start ``argv`` in its own session, its output appended to ``log_path``, and
    :func:`wait_serving`; on any failure its process group is stopped before the error is raised.

    ``handed``: a listening socket the child serves (its ``--fd``); this process's copy is
    closed once the child has it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_start = log_path.stat().st_size if log_path.exists() else 0
    if handed is not None:
        popen["pass_fds"] = (*popen.get("pass_fds", ()), handed.fileno())
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen
            )
        finally:
            if handed is not None:
                handed.close()
    try:
        wait_serving(proc, name, log_path, ports, ready, timeout, log_start)
    except BaseException:
        _stop_group(proc)
        raise
    return proc


def _stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM (a server that started servers of its own stops them), SIGKILL after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


def with_free_ports(
    start: Callable[..., T], count: int = 1, offsets: Sequence[int] = (0,), attempts: int = 4
) -> T:
    """``start(*ports)`` with ``count`` candidate ports (each with its ``offsets`` free), again
    on new ports while it raises PortTaken for one of them, at most ``attempts`` times."""
    for attempt in range(attempts):
        ports = [candidate_port(offsets) for _ in range(count)]
        try:
            return start(*ports)
        except PortTaken as exc:
            picked = {port + offset for port in ports for offset in offsets}
            if attempt == attempts - 1 or (exc.port is not None and exc.port not in picked):
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def serve_in_thread(app: Any, timeout: float = 60.0, **config: Any) -> Iterator[str]:
    """``app`` served by uvicorn in a daemon thread of this process, on a socket bound here;
    yields its URL (``http://127.0.0.1:PORT``) and stops the server when the block ends."""
    import uvicorn

    sock = listening_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **config}))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise ServerStartError(f"uvicorn serving {app!r} did not start (its errors are logged above)")
            time.sleep(0.05)
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
