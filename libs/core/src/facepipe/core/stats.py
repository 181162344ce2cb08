"""Cluster-wide counters and timings, kept in Redis so every replica adds to one view.

Keys (docs/design.md "Redis keys"):

- ``stats:counters`` — HASH counter → integer (HINCRBY), the global figures on a single Redis
- ``stats:timings:<name>`` — HASH ``count`` (HINCRBY), ``total_ms`` (HINCRBYFLOAT)
- ``stats:tenant:{<tenant>}:counters`` and ``stats:tenant:{<tenant>}:timings:<name>`` — the same per
  tenant; the braces are the tenant's Redis Cluster hash tag, shared with its streams
- on a Redis Cluster only: ``stats:untenanted:{<tag>}:...`` — writes that name no tenant (or one
  that is not the stream's), kept in the slot of the stream's tag ``<tag>``

On a single Redis every write goes to the global key and, with a tenant, to the tenant's. On a
Redis Cluster the worker's ack MULTI must stay within its stream's slot, so each write goes to
exactly one key (the tenant's, else the untenanted one of the slot) and the global figures are
the sum of all of them, computed when read, across every master.

:meth:`Stats.snapshot` returns exactly the Phase 3 ``GET /stats`` body. Writes
take an optional ``pipeline=`` so the worker adds them to the MULTI that acks the
message: a counter moves if and only if the message was acked. Each write is also
mirrored into the Prometheus metrics of this process.
"""

from __future__ import annotations

from typing import Any

import redis

from facepipe.core import metrics
from facepipe.core.redisconn import is_cluster, scan_keys, tagged
from facepipe.core.tenancy import validate_tenant_id

COUNTERS = ("faces_processed", "faces_rejected", "faces_dup_skipped", "worker_msgs_acked", "worker_msgs_dlq")
TIMINGS = ("detection", "embedding", "storage", "upsert")


class Stats:
    """Counters and timings in Redis (``prefix`` namespaces the keys, ``stage`` labels the mirror)."""

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = "stats",
        stage: str = "none",
        slot_tag: str | None = None,
    ) -> None:
        """``slot_tag``: on a cluster, the hash tag of the stream whose MULTI the writes join."""
        self.redis = redis_client
        self.prefix = prefix
        self.stage = stage
        self.cluster = is_cluster(redis_client)
        self.slot_tag = slot_tag

    # --- keys ---
    def _scope(self, tenant: str | None) -> str:
        return self.prefix if tenant is None else f"{self.prefix}:tenant:{tagged(validate_tenant_id(tenant))}"

    def tenant_pattern(self, tenant: str) -> str:
        """Matches every key of one tenant's figures (deletion)."""
        return f"{self._scope(tenant)}:*"

    def untenanted_scope(self) -> str:
        """Cluster only: where the writes of this slot that name no tenant go."""
        return f"{self.prefix}:untenanted:{tagged(self.slot_tag or 'none')}"

    def _write_scopes(self, tenant: str | None) -> list[str]:
        if not self.cluster:
            return [self._scope(None)] if tenant is None else [self._scope(None), self._scope(tenant)]
        if tenant is not None and (self.slot_tag is None or tenant == self.slot_tag):
            return [self._scope(tenant)]
        return [self.untenanted_scope()]

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
        target = self.redis.pipeline(transaction=False) if pipeline is None else pipeline
        for scope in self._write_scopes(tenant):
            target.hincrby(f"{scope}:counters", counter, int(n))
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
        target = self.redis.pipeline(transaction=False) if pipeline is None else pipeline
        for scope in self._write_scopes(tenant):
            key = f"{scope}:timings:{name}"
            target.hincrby(key, "count", int(count))
            target.hincrbyfloat(key, "total_ms", float(ms))
        if pipeline is None:
            target.execute()
        metrics.STAGE_DURATION.labels(stage=name).observe(max(float(ms), 0.0) / 1000.0)

    # --- read ---
    def snapshot(self, tenant: str | None = None) -> dict[str, dict[str, Any]]:
        """The Phase 3 ``/stats`` body: all five counters and four timings, 0 when unset.

        On a cluster the global body is the sum of every tenant's and slot's figures."""
        if self.cluster and tenant is None:
            raw_counters, raw_timings = self._summed()
        else:
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

    def _summed(self) -> tuple[dict[str, float], list[dict[str, float]]]:
        """Counters and timings summed over every tenant and untenanted scope of every master."""
        keys = [
            key.decode() if isinstance(key, bytes) else key
            for pattern in (f"{self.prefix}:tenant:*", f"{self.prefix}:untenanted:*")
            for key in scan_keys(self.redis, pattern)
        ]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        counters: dict[str, float] = {}
        timings: dict[str, dict[str, float]] = {name: {} for name in TIMINGS}
        for key, raw in zip(keys, pipe.execute() if keys else [], strict=True):
            scope, _, rest = key.rpartition("}:")
            target = counters if rest == "counters" else timings.get(rest.removeprefix("timings:"))
            if not scope or target is None:
                continue
            for field, value in _decoded(raw).items():
                target[field] = target.get(field, 0.0) + float(value)
        return counters, [timings[name] for name in TIMINGS]

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
