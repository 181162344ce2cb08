"""The local-mode supervisor with real child processes: restart on crash, one SIGTERM on stop."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from facepipe.cli.supervisor import ChildSpec, Supervisor

CRASHER = "import sys; print('crasher up', flush=True); sys.exit(3)"
GRACEFUL = """
import signal, sys, time
count = 0
def on_term(signum, frame):
    global count
    count += 1
    print(f'SIGTERM #{count}', flush=True)
    time.sleep(0.3)  # "finishing the batch in hand"
    print('clean exit', flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print('worker up', flush=True)
while True:
    time.sleep(0.05)
"""


def _wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_crashed_child_is_restarted_and_all_stop_cleanly(tmp_path: Path) -> None:
    events: list[str] = []
    lines: list[tuple[str, str]] = []
    env = dict(os.environ)
    supervisor = Supervisor(
        [
            ChildSpec("crasher", [sys.executable, "-c", CRASHER], env),
            ChildSpec("worker", [sys.executable, "-c", GRACEFUL], env),
        ],
        tmp_path / "logs",
        on_event=events.append,
        on_line=lambda name, line: lines.append((name, line)),
    )
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(supervisor.run(install_signal_handlers=False)))
    runner.start()
    try:
        # Backoff 1 s then 2 s: two restarts within a few seconds.
        assert _wait_for(lambda: supervisor.restarts()["crasher"] >= 2), events
        assert _wait_for(lambda: ("worker", "worker up") in lines)
        worker_pid = supervisor.pids()["worker"]
    finally:
        supervisor.request_stop()
        runner.join(timeout=60)
    assert result == [0]
    assert any("crasher" in e and "exited with code 3" in e and "restarting in" in e for e in events), events
    restarted = [e for e in events if e.startswith("restarted crasher")]
    assert restarted[0].startswith("restarted crasher (restart #1): pid "), events
    assert restarted[1].startswith("restarted crasher (restart #2): pid "), events
    assert supervisor.restarts()["worker"] == 0
    worker_lines = [line for name, line in lines if name == "worker"]
    assert worker_lines[-2:] == ["SIGTERM #1", "clean exit"]  # exactly one SIGTERM, then a clean exit
    assert (
        not Path(f"/proc/{worker_pid}").exists() or "zombie" in Path(f"/proc/{worker_pid}/status").read_text()
    )
    log = (tmp_path / "logs" / "crasher.log").read_text()
    # The original run and (at least) the first restart, all in one file; the latest restart may
    # have been stopped before it printed anything.
    assert log.count("crasher up") >= 2


def test_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
        "time.sleep(600)"
    )
    events: list[str] = []
    lines: list[str] = []
    supervisor = Supervisor(
        [ChildSpec("stubborn", [sys.executable, "-c", stubborn], dict(os.environ))],
        tmp_path,
        on_event=events.append,
        on_line=lambda _n, line: lines.append(line),
        stop_timeout_s=1.0,
    )
    runner = threading.Thread(target=lambda: supervisor.run(install_signal_handlers=False))
    runner.start()
    assert _wait_for(lambda: "up" in lines)
    started = time.monotonic()
    supervisor.request_stop()
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert time.monotonic() - started < 20
    assert any("did not stop within" in e for e in events), events


PDEATHSIG = """
import ctypes, time
sig = ctypes.c_int()
ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
print(f'pdeathsig {sig.value}', flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_get_pdeathsig_from_a_prctl_resolved_before_the_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libc is resolved once, in the parent. Looking it up again between fork and exec (find_library
    # runs `ldconfig -p`, CDLL dlopens) would raise in the forked child, where these are inherited,
    # and Popen would fail with "Exception occurred in preexec_fn".
    def after_fork(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("libc looked up in the child")

    monkeypatch.setattr(ctypes.util, "find_library", after_fork)
    monkeypatch.setattr(ctypes, "CDLL", after_fork)
    lines: list[str] = []
    supervisor = Supervisor(
        [ChildSpec("child", [sys.executable, "-c", PDEATHSIG], dict(os.environ))],
        tmp_path,
        on_event=lambda _e: None,
        on_line=lambda _n, line: lines.append(line),
        stop_timeout_s=5.0,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            supervisor.run(install_signal_handlers=False)
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        assert _wait_for(lambda: bool(lines) or bool(errors)), "the child printed nothing"
    finally:
        supervisor.request_stop()
        runner.join(timeout=30)
    assert not errors, errors
    assert lines[0] == "pdeathsig 15"  # SIGTERM when the supervisor's thread exits


def test_indexer_shares_the_api_process_only_with_embedded_qdrant() -> None:
    from facepipe.cli.up import child_specs

    embedded = child_specs({}, embedded_qdrant=True, host="127.0.0.1", port=8001)
    assert [s.name for s in embedded] == ["detector", "embedder", "api+indexer"]
    assert embedded[2].argv[1:] == [
        "-m",
        "facepipe.cli.api_with_indexer",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
    ]
    server = child_specs({}, embedded_qdrant=False, host="127.0.0.1", port=9000)
    assert [s.name for s in server] == ["detector", "embedder", "indexer", "ops-api"]
    assert server[2].argv[1:] == ["-m", "facepipe.indexer"]
    assert server[3].argv[1:3] == ["-m", "facepipe.ops_api"]
