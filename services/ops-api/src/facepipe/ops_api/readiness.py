"""GET /ready: the five Phase 3 checks (docs/compatibility.md), each bounded in time.

Each check runs in its own thread and is given ``CHECK_TIMEOUT_S``; a check that
has not answered by then is "unhealthy" (a paused or partitioned S3 server
accepts TCP connections and then never answers, which a client timeout alone
would notice only after tens of seconds). A check still running from an earlier
probe is not started again: repeated probes against a hung dependency never pile
up threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from facepipe.ops_api.backend import OpsBackend

CHECK_NAMES = ("models", "storage", "vector_db", "queue", "dedup_cache")
CHECK_TIMEOUT_S = 3.0

CheckFn = Callable[[], None]  # returns when healthy, raises (with a readable message) when not


@dataclass
class ReadyReport:
    ready: bool
    checks: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        body: dict = {"ready": self.ready, "checks": self.checks}
        if self.errors:
            body["errors"] = self.errors
        return body


class ReadinessProbe:
    def __init__(
        self,
        checks: dict[str, CheckFn],
        timeout_s: float = CHECK_TIMEOUT_S,
        targets: dict[str, str] | None = None,
    ) -> None:
        self._checks = checks
        self._targets = targets or {}
        self._timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=2 * len(checks), thread_name_prefix="ready")
        self._inflight: dict[str, Future[None]] = {}
        self._lock = threading.Lock()

    def _submit(self, name: str) -> Future[None]:
        with self._lock:
            running = self._inflight.get(name)
            if running is not None and not running.done():
                return running  # still stuck on the previous probe: wait on that one, start nothing new
            future = self._pool.submit(self._checks[name])
            self._inflight[name] = future
            return future

    def run(self) -> ReadyReport:
        futures = {name: self._submit(name) for name in self._checks}
        deadline = time.monotonic() + self._timeout_s
        checks: dict[str, str] = {}
        errors: dict[str, str] = {}
        for name, future in futures.items():
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                checks[name] = "healthy"
            except TimeoutError:
                checks[name] = "unhealthy"
                target = self._targets.get(name, name)
                errors[name] = f"{target} did not answer within {self._timeout_s:.0f}s"
            except Exception as exc:  # every failure of a check is reported, never raised
                checks[name] = "unhealthy"
                errors[name] = f"{type(exc).__name__}: {exc}"[:500]
        return ReadyReport(ready=all(v == "healthy" for v in checks.values()), checks=checks, errors=errors)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def backend_checks(backend: OpsBackend) -> dict[str, CheckFn]:
    """The runbook's five checks against the backend's Redis, S3, Qdrant and models."""
    settings = backend.settings

    def models() -> None:
        backend.models  # noqa: B018 - loads once; raises with the reason when files are missing

    def storage() -> None:
        client = backend.store.client
        missing = [b for b in backend.store.buckets if not client.bucket_exists(b)]
        if missing:
            raise RuntimeError(f"buckets missing on {settings.minio_endpoint}: {', '.join(missing)}")

    def vector_db() -> None:
        index = backend.index
        if index.vector_size() is None:
            raise RuntimeError(f"collection {settings.qdrant_collection!r} does not exist yet")

    def queue() -> None:
        backend.redis.ping()

    def dedup_cache() -> None:
        if not backend.dedup.healthy():  # the reads a real check makes; writes nothing
            raise RuntimeError("Redis did not answer the dedup cache's read-only check")

    return {
        "models": models,
        "storage": storage,
        "vector_db": vector_db,
        "queue": queue,
        "dedup_cache": dedup_cache,
    }


def backend_probe(backend: OpsBackend) -> ReadinessProbe:
    """A probe of :func:`backend_checks`, whose timeouts name the server that did not answer."""
    settings = backend.settings
    qdrant = (
        f"Qdrant (embedded at {settings.qdrant_path})"
        if settings.qdrant_embedded
        else f"Qdrant {settings.qdrant_url}"
    )
    return ReadinessProbe(
        backend_checks(backend),
        targets={
            "storage": f"S3 {settings.minio_endpoint}",
            "vector_db": qdrant,
            "queue": "Redis",
            "dedup_cache": "Redis",
            "models": "model loading",
        },
    )
