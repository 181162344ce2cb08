"""A real ``facepipe up`` in a subprocess, and what a test does with it "from another terminal".

Used by tests/cli/test_local_mode_e2e.py (one stack for the module) and
tests/cli/test_model_migration_e2e.py (a stack restarted with another MODEL_PACK).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from facepipe.cli.ports import launch, with_free_ports
from facepipe.core.settings import Settings, load_settings

# Variables of a developer's shell that would point the stack elsewhere.
_SCRUBBED = (
    "REDIS_",
    "MINIO_",
    "QDRANT_",
    "BUCKET_",
    "OPS_API_",
    "FACEPIPE_",
    "FACE_",
    "DEDUP_",
    "GLOBAL_DEDUP",
    "ENABLE_",
    "WORKER_",
    "MODEL_PACK",
    "DETECTED_STREAM",
    "EMBEDDED_STREAM",
)


@dataclass
class Stack:
    api: str
    proc: subprocess.Popen
    env: dict[str, str]
    data_dir: Path
    local: dict[str, Any]

    @property
    def settings(self) -> Settings:
        return load_settings(**self.local["settings"])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.local["settings"]["redis_url"], decode_responses=True)

    def cli(self, *args: str, expect: int = 0, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "facepipe.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == expect, (
            f"facepipe {' '.join(args)} -> {result.returncode}\n"
            f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
        )
        return result

    def cli_json(self, *args: str, expect: int = 0) -> Any:
        return json.loads(self.cli(*args, "--json", expect=expect).stdout)

    def log(self) -> str:
        return (self.data_dir / "up.log").read_text(errors="replace")


def stack_env(models_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without what would point a stack elsewhere, plus the test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(
        {
            "MODELS_DIR": str(models_dir),
            "INFERENCE_DEVICE": "cpu",
            "ORT_INTRA_OP_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "READ_BLOCK_MS": "500",
            **extra,
        }
    )
    return env


@contextlib.contextmanager
def running_stack(data_dir: Path, env: dict[str, str], port: int | None = None) -> Iterator[Stack]:
    """``facepipe up --data-dir <data_dir>/stack`` until the block ends (then SIGTERM, and SIGKILL if needed),
    on ``port`` or a free one (another if that one is taken meanwhile).

    Its output is appended to ``<data_dir>/up.log``; a later stack on the same data dir reuses
    the data (Redis' append-only file, SeaweedFS, the vector store)."""

    def start(port: int) -> tuple[subprocess.Popen, str, dict[str, str]]:
        api = f"http://127.0.0.1:{port}"
        up_env = {**env, "FACEPIPE_API": api}
        command = [sys.executable, "-m", "facepipe.cli", "up", "--data-dir", str(data_dir / "stack")]

        def ready() -> bool:
            return httpx.get(f"{api}/ready", timeout=10).status_code == 200

        proc = launch("facepipe up", [*command, "--port", str(port)], data_dir / "up.log", [port], ready,
                      timeout=240, env=up_env)  # fmt: skip
        return proc, api, up_env

    proc, api, env = start(port) if port else with_free_ports(start)
    local: dict[str, Any] = {}
    try:
        local = httpx.get(f"{api}/local", timeout=10).json()
        yield Stack(api, proc, env, data_dir, local)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Servers live in their own sessions: make sure none outlives the test.
        for server in local.get("servers", {}).values():
            if server.get("pid") and psutil.pid_exists(server["pid"]):
                os.killpg(server["pid"], signal.SIGKILL)
