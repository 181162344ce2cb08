"""``facepipe demo`` (``make demo``): a throw-away local stack, sample faces in, a search out.

Starts ``facepipe up`` on a free port (another if that one is taken meanwhile) with a
temporary data dir, ingests the
sample faces that ship inside installed packages (insightface's t1.jpg, 6 faces;
scikit-image's astronaut) plus ``../shared/data/faces`` when present and any
paths given, waits for the pipeline, prints the stats and a search, stops the
stack and exits 0 (non-zero if any step failed).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

from facepipe.cli.ports import ServerStartError, launch, with_free_ports
from facepipe.cli.samples import sample_images

TENANT = "demo"
READY_TIMEOUT_S = 300.0
SHARED_FACES = Path("..") / "shared" / "data" / "faces"


def _start_up(data_dir: Path, log_path: Path, port: int) -> tuple[subprocess.Popen, str]:
    """``facepipe up`` on ``port``, once it holds the port and its ops-api says ready."""
    api = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "facepipe.cli", "up", "--data-dir", str(data_dir), "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FACEPIPE_API": api}

    def ready() -> bool:
        return httpx.get(f"{api}/ready", timeout=10).status_code == 200

    return launch("facepipe up", argv, log_path, [port], ready, READY_TIMEOUT_S, env=env), api


def _stop(up: subprocess.Popen, console: Console) -> int:
    if up.poll() is None:
        os.killpg(up.pid, signal.SIGTERM)
        try:
            return up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            console.print("[red]the stack did not stop within 90s: killing it[/]")
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
            return 1
    return up.returncode


def run_demo(extra_paths: list[Path] | None = None, keep: bool = False) -> int:
    console = Console(highlight=False)
    data_dir = Path(tempfile.mkdtemp(prefix="facepipe-demo-"))
    log_path = data_dir / "up.log"
    console.rule("[bold]facepipe demo")
    console.print(
        f"starting the local stack: facepipe up --data-dir {data_dir} --port <free>  (log: {log_path})"
    )
    started = time.monotonic()
    try:
        up, api = with_free_ports(functools.partial(_start_up, data_dir, log_path))
    except ServerStartError as exc:  # up was stopped; its log's end is in the message
        console.print("[bold red]the stack did not become ready:[/]")
        console.print(str(exc), markup=False)
        code = 1
    else:
        console.print(f"ready in {time.monotonic() - started:.0f}s: {api}")
        try:
            code = _run_steps(console, api, data_dir, extra_paths or [])
        except Exception as exc:  # report, then still stop the stack below
            console.print(f"[bold red]demo step crashed: {type(exc).__name__}: {exc}[/]")
            code = 1
        console.rule("stopping the stack")
        stop_code = _stop(up, console)
        if stop_code != 0:
            console.print(f"[red]facepipe up exited with code {stop_code}; log: {log_path}[/]")
            code = code or 1
    if keep or code:
        console.print(f"data and logs kept in {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    console.print("[bold green]demo finished[/]" if code == 0 else "[bold red]demo failed[/]")
    return code


def _run_steps(console: Console, api: str, data_dir: Path, extra_paths: list[Path]) -> int:
    from facepipe.cli.main import main as facepipe

    photos = [str(p) for p in sample_images(data_dir / "samples")]
    query = photos[1]  # the astronaut
    if SHARED_FACES.is_dir():
        photos.append(str(SHARED_FACES))
        query = str(SHARED_FACES / "obama_3.jpg")
    photos += [str(p) for p in extra_paths]
    console.rule(f"facepipe ingest <{len(photos)} paths> --tenant {TENANT} --wait")
    for photo in photos:
        console.print(f"  {photo}", soft_wrap=True)
    steps = [
        ["ingest", *photos, "--tenant", TENANT, "--wait", "--timeout", "300", "--api", api],
        ["stats", "--api", api],
        ["search", query, "--tenant", TENANT, "--top-k", "3", "--api", api],
    ]
    for argv in steps:
        if argv[0] != "ingest":
            console.rule("facepipe " + " ".join(a for a in argv if a not in {"--api", api}))
        code = facepipe(argv)
        if code != 0:
            console.print(f"[bold red]facepipe {argv[0]} failed with exit code {code}[/]")
            return code
    return 0
