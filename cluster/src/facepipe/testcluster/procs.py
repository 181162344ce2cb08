"""The cluster's host processes: started in their own session, logged to a file each, stopped in reverse."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartError(RuntimeError):
    """A component did not become ready; the message carries the tail of its log."""


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Component:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue


def start(name: str, argv: Sequence[str], logs: Path, env: dict[str, str] | None = None) -> Component:
    log = logs / f"{name}.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Component(name, proc, log)


def wait_until(component: Component, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``ready`` until it holds; fail at once, with the log, if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not component.alive():
            raise StartError(
                f"{component.name} exited ({component.proc.returncode}) before {what}:\n{tail(component.log)}"
            )
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    raise StartError(f"{component.name}: not {what} within {timeout:.0f}s:\n{tail(component.log)}")
