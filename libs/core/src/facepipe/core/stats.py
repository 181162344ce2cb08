"""Cluster-wide counters and timings, kept in Redis so every replica adds to one view.

Keys (docs/design.md "Redis keys"):

- ``stats:counters`` — HASH counter → integer (HINCRBY)
- ``stats:timings:<name>`` — HASH ``count`` (HINCRBY), ``total_ms`` (HINCRBYFLOAT)
- ``stats:tenant:<tenant>:counters`` and ``stats:tenant:<tenant>:timings:<name>`` — the same per tenant

:meth:`Stats.snapshot` returns exactly the Phase 3 ``GET /stats`` body. Writes
take an optional ``pipeline=`` so the worker adds them to the MULTI that acks the
message: a counter moves if and only if the message was acked. Each write is also
mirrored into the Prometheus metrics of this process.
"""

from __future__ import annotations

from typing import Any

import redis

from facepipe.core import metrics
from facepipe.core.tenancy import validate_tenant_id

COUNTERS = ("faces_processed", "faces_rejected", "faces_dup_skipped", "worker_msgs_acked", "worker_msgs_dlq")
TIMINGS = ("detection", "embedding", "storage", "upsert")


class Stats:
    """Counters and timings in Redis (``prefix`` namespaces the keys, ``stage`` labels the mirror)."""

    def __init__(self, redis_client: redis.Redis, prefix: str = "stats", stage: str = "none") -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.stage = stage

    # --- keys ---
    def _scope(self, tenant: str | None) -> str:
        return self.prefix if tenant is None else f"{self.prefix}:tenant:{validate_tenant_id(tenant)}"

    def counters_key(self, tenant: str | None = None) -> str:
        return f"{self._scope(tenant)}:counters"

    def timing_key(self, name: str, tenant: str | None = None) -> str:
        return f"{self._scope(tenant)}:timings:{name}"

    # --- writes ---
    def incr(
        self,
        counter: str,
        n: int = 1,
        tenant: str | None = None,
        *,
        pipeline: Any = None,
        reason: str | None = None,
    ) -> None:
        """Add ``n`` to ``counter`` globally and, with ``tenant``, to that tenant's counters.

        ``pipeline``: queue the writes on it (the caller executes) instead of sending now; the
        Prometheus mirror is then the caller's to move (:meth:`mirror`) once the writes ran, so a
        MULTI that is retried or never runs moves nothing.
        ``reason``: label for the Prometheus mirror of ``faces_rejected``.
        """
        if counter not in COUNTERS:
            raise ValueError(f"unknown counter {counter!r}; known: {', '.join(COUNTERS)}")
        if n < 0:
            raise ValueError(f"counters only go up; got n={n} for {counter!r}")
        if n == 0:
            return
        scopes = [None] if tenant is None else [None, tenant]
        target = self.redis.pipeline(transaction=False) if pipeline is None else pipeline
        for scope in scopes:
            target.hincrby(self.counters_key(scope), counter, int(n))
        if pipeline is None:
            target.execute()
            self.mirror(counter, n, reason)

    def record_timing(
        self,
        name: str,
        ms: float,
        count: int = 1,
        tenant: str | None = None,
        *,
        pipeline: Any = None,
    ) -> None:
        """Add one timing of ``ms`` milliseconds covering ``count`` items to timing ``name``."""
        if not name or not name.replace("_", "").isalnum():
            raise ValueError(f"timing name must be a word such as 'detection', got {name!r}")
        scopes = [None] if tenant is None else [None, tenant]
        target = self.redis.pipeline(transaction=False) if pipeline is None else pipeline
        for scope in scopes:
            key = self.timing_key(name, scope)
            target.hincrby(key, "count", int(count))
            target.hincrbyfloat(key, "total_ms", float(ms))
        if pipeline is None:
            target.execute()
        metrics.STAGE_DURATION.labels(stage=name).observe(max(float(ms), 0.0) / 1000.0)

    # --- read ---
    def snapshot(self, tenant: str | None = None) -> dict[str, dict[str, Any]]:
        """The Phase 3 ``/stats`` body: all five counters and four timings, 0 when unset."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.counters_key(tenant))
        for name in TIMINGS:
            pipe.hgetall(self.timing_key(name, tenant))
        raw_counters, *raw_timings = pipe.execute()
        counters = _decoded(raw_counters)
        snapshot_counters = {name: int(float(counters.get(name, 0))) for name in COUNTERS}
        timings: dict[str, dict[str, Any]] = {}
        for name, raw in zip(TIMINGS, raw_timings, strict=True):
            fields = _decoded(raw)
            count = int(float(fields.get("count", 0)))
            total = round(float(fields.get("total_ms", 0.0)), 3)
            timings[name] = {"count": count, "total": total, "avg": round(total / count, 3) if count else 0.0}
        return {"counters": snapshot_counters, "timings_ms": timings}

    def mirror(self, counter: str, n: int, reason: str | None = None) -> None:
        """Add a counter write that has run to this process's Prometheus metrics."""
        # The worker runtime owns worker_msgs_* in Prometheus (it knows stage and reason), and
        # facepipe_faces_processed_total{stage} (faces each stage accepted, counted at its ack).
        if counter == "faces_rejected":
            metrics.FACES_REJECTED.labels(reason=reason or "unspecified").inc(n)
        elif counter == "faces_dup_skipped":
            metrics.FACES_DUP_SKIPPED.inc(n)


def _decoded(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (v.decode() if isinstance(v, bytes) else str(v))
        for k, v in raw.items()
    }
