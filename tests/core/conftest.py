"""Fixtures for the worker runtime tests: a toy stage worker run as a real subprocess.

Tests publish to a real redis-server (the session fixture, flushed per test), start
``toy_worker.py`` with ``python``, and count its effects in Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from facepipe.cli.ports import ServerStartError, wait_serving, with_free_ports

TOY_WORKER = Path(__file__).with_name("toy_worker.py")
INGEST = "face-processing-queue"
OUT = f"{INGEST}:out"
DLQ = f"{INGEST}:dlq"
GROUP = "pipeline"
# Every variable the workers read that a developer's shell might have set.
_SCRUBBED_PREFIXES = (
    "REDIS_",
    "FACE_",
    "GLOBAL_DEDUP",
    "DEDUP_",
    "WORKER_",
    "MAX_",
    "ENABLE_",
    "CLAIM_",
    "READ_BLOCK",
    "RETRY_",
    "METRICS_",
    "TOY_",
    "LOG_LEVEL",
)


def ingest_payload(n: int, **extra: Any) -> dict[str, Any]:
    """A valid Phase 3 ingest message (its batch-publish example, docs/compatibility.md)."""
    return {
        "image_sha256": f"test{n}",
        "bucket": "raw-images",
        "key": f"demo/test{n}.jpg",
        "tenant_id": "demo",
        "site": "local",
        "url": f"http://example.com/test{n}.jpg",
        "image_phash": f"{n:016x}",
        "face_hints": None,
        "n": n,
        **extra,
    }


@dataclass
class RunningWorker:
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@dataclass
class Harness:
    redis: redis.Redis
    env: dict[str, str]
    tmp_path: Path
    workers: list[RunningWorker] = field(default_factory=list)

    ingest_payload = staticmethod(ingest_payload)

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what)

    def publish(self, payload: Any, field_name: str = "message", stream: str = INGEST) -> str:
        raw = payload if isinstance(payload, str | bytes) else json.dumps(payload)
        return str(self.redis.xadd(stream, {field_name: raw}))

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        return {**self.env, **extra}

    def run(self, *args: str, timeout: float = 90, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run the toy worker to completion (e.g. with --once); output captured."""
        return subprocess.run(
            [sys.executable, str(TOY_WORKER), *args],
            env=self._env(extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self, *args: str, **extra_env: str) -> RunningWorker:
        """Start a long-running toy worker; its stderr+stdout go to a file read with .log()."""
        log_path = self.tmp_path / f"worker-{len(self.workers)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, str(TOY_WORKER), *args],
                env=self._env(extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        worker = RunningWorker(proc, log_path)
        self.workers.append(worker)
        return worker

    def start_with_metrics(self, *args: str, **extra_env: str) -> tuple[RunningWorker, int]:
        """:meth:`start` with METRICS_PORT a free port (another if that one is taken meanwhile),
        once the worker itself listens there; the worker and its metrics port."""

        def start(port: int) -> tuple[RunningWorker, int]:
            worker = self.start(*args, METRICS_PORT=str(port), **extra_env)
            try:
                wait_serving(worker.proc, "the toy worker", worker.log_path, [port])
            except ServerStartError:
                worker.kill()
                raise
            return worker, port

        return with_free_ports(start)

    def out_sources(self) -> list[str]:
        return [json.loads(fields["message"])["source"] for _id, fields in self.redis.xrange(OUT)]

    def pending(self, stream: str = INGEST) -> int:
        return int(self.redis.xpending(stream, GROUP)["pending"])

    def batches(self) -> list[list[str]]:
        return [json.loads(item) for item in self.redis.lrange("toy:batches", 0, -1)]


def wait_until(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """Poll until ``predicate()`` is truthy; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def harness(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[Harness]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    env.update(
        REDIS_URL=redis_url,
        REDIS_CONSUMER_NAME="toy-1",
        READ_BLOCK_MS="200",
        RETRY_BACKOFF_INITIAL_S="0.05",
        RETRY_BACKOFF_MAX_S="0.2",
        PYTHONUNBUFFERED="1",
    )
    h = Harness(redis_client, env, tmp_path)
    yield h
    for worker in h.workers:
        if worker.proc.poll() is None:
            worker.kill()
