"""A small process supervisor: run child processes, restart the ones that crash, stop all cleanly.

Used by ``facepipe up`` (local mode) and ``facepipe worker all``. Each child's
stdout and stderr go to ``<log_dir>/<name>.log`` and, when ``echo`` is on, to the
console with a ``name |`` prefix so a newcomer sees the pipeline working.

Children run in their own session: a Ctrl-C in the terminal reaches only the
supervisor, which then sends exactly one SIGTERM to each child (the workers'
graceful path: finish the batch in hand, ack, exit 0). On Linux each child also
asks the kernel for SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so a
killed supervisor never leaves workers holding the Qdrant local-mode lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

RESTART_BACKOFF_INITIAL_S = 1.0
RESTART_BACKOFF_MAX_S = 30.0
# A child that ran this long before exiting counts as healthy: its next restart starts the backoff afresh.
HEALTHY_RUN_S = 30.0
POLL_INTERVAL_S = 0.2
RESTARTED = "restarted"  # event: "restarted <name> (restart #<n>): pid <pid>"

EventSink = Callable[[str], None]
LineSink = Callable[[str, str], None]


@dataclass
class ChildSpec:
    """How to start one child process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    pass_fds: tuple[int, ...] = ()  # descriptors it inherits (a listening socket for `--fd N`)


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_failures: int = 0
    restart_at: float | None = None
    readers: list[threading.Thread] = field(default_factory=list)


PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved once, in the parent (Linux only; None elsewhere or when absent).

    From the symbols already loaded in this process (``CDLL(None)``, which holds libc): no
    ``ctypes.util.find_library``, which runs ``ldconfig -p``, and no new ``dlopen``. Neither
    may run in :func:`die_with_parent`, between fork and exec in a child of a threaded process.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()
_SIGTERM = int(signal.SIGTERM)


def die_with_parent() -> None:
    """preexec_fn: SIGTERM this child when the thread that started it exits (Linux only).

    Only the prctl call resolved at import: nothing else runs between fork and exec.
    """
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0)


class Supervisor:
    """Start children, restart crashed ones with exponential backoff, stop all on request."""

    def __init__(
        self,
        specs: list[ChildSpec],
        log_dir: Path,
        on_event: EventSink,
        on_line: LineSink | None = None,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self._children = [_Child(spec) for spec in specs]
        self._log_dir = log_dir
        self._on_event = on_event
        self._on_line = on_line
        self._stop_timeout_s = stop_timeout_s
        self._stop_requested = threading.Event()
        self._exit_code = 0
        log_dir.mkdir(parents=True, exist_ok=True)

    # --- public surface ---

    def pids(self) -> dict[str, int]:
        return {
            c.spec.name: c.proc.pid for c in self._children if c.proc is not None and c.proc.poll() is None
        }

    def restarts(self) -> dict[str, int]:
        return {c.spec.name: c.restarts for c in self._children}

    def request_stop(self, exit_code: int = 0) -> None:
        """Ask the loop in :meth:`run` to stop every child and return (thread- and signal-safe)."""
        if not self._stop_requested.is_set():
            self._exit_code = exit_code
        self._stop_requested.set()

    @property
    def stopping(self) -> bool:
        return self._stop_requested.is_set()

    def run(self, install_signal_handlers: bool = True) -> int:
        """Supervise until SIGINT/SIGTERM or :meth:`request_stop`; return the exit code."""
        if install_signal_handlers:
            self._install_signal_handlers()
        try:
            for child in self._children:
                self._spawn(child)
            while not self._stop_requested.wait(POLL_INTERVAL_S):
                self._check_children()
        finally:
            self._stop_all()
        return self._exit_code

    # --- internals ---

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            if self._stop_requested.is_set():
                # A second Ctrl-C: the user is impatient; kill instead of waiting.
                self._on_event("second signal: killing children now")
                for child in self._children:
                    if child.proc is not None and child.proc.poll() is None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(child.proc.pid, signal.SIGKILL)
                return
            self._on_event(f"{signal.Signals(signum).name} received: stopping (Ctrl-C again to force)")
            self.request_stop(0)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def _spawn(self, child: _Child) -> None:
        spec = child.spec
        child.proc = subprocess.Popen(
            spec.argv,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=spec.pass_fds,
            preexec_fn=die_with_parent if _PRCTL is not None else None,
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        reader = threading.Thread(
            target=self._pump, args=(spec.name, child.proc.stdout), name=f"log-{spec.name}", daemon=True
        )
        reader.start()
        child.readers = [reader]

    def _pump(self, name: str, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        with (
            open(self._log_dir / f"{name}.log", "ab", buffering=0) as log,
            contextlib.suppress(ValueError, OSError),
        ):
            for raw in iter(stream.readline, b""):
                log.write(raw)
                if self._on_line is not None:
                    self._on_line(name, raw.decode("utf-8", "replace").rstrip("\n"))

    def _check_children(self) -> None:
        now = time.monotonic()
        for child in self._children:
            proc = child.proc
            if proc is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at and not self._stop_requested.is_set():
                    child.restarts += 1
                    self._spawn(child)
                    # The supervisor's own account of the restart, with the new process's pid:
                    # what a caller (or a test) waits on instead of watching the process table.
                    assert child.proc is not None
                    self._on_event(
                        f"{RESTARTED} {child.spec.name} (restart #{child.restarts}): pid {child.proc.pid}"
                    )
                continue
            code = proc.poll()
            if code is None:
                continue
            ran_s = now - child.started_at
            child.quick_failures = 0 if ran_s >= HEALTHY_RUN_S else child.quick_failures + 1
            delay = min(
                RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_INITIAL_S * 2 ** max(0, child.quick_failures - 1)
            )
            self._on_event(
                f"{child.spec.name} (pid {proc.pid}) exited with code {code} after {ran_s:.1f}s; "
                f"restarting in {delay:.0f}s (log: {self._log_dir / (child.spec.name + '.log')})"
            )
            child.restart_at = now + delay

    def _stop_all(self) -> None:
        running = [c for c in self._children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + self._stop_timeout_s
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._on_event(
                    f"{child.spec.name} did not stop within {self._stop_timeout_s:.0f}s: killing it"
                )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        for child in self._children:
            for reader in child.readers:
                reader.join(timeout=2)
            if child.proc is not None:
                self._on_event(f"{child.spec.name} stopped (exit code {child.proc.returncode})")
