"""The figures /stats and /metrics report beyond the counters: stream depth (also set as the
``facepipe_stream_*`` gauges the autoscalers read) and the dedup cache's size."""

from __future__ import annotations

import time
from typing import Any

from facepipe.core import metrics
from facepipe.ops_api.backend import OpsBackend
from facepipe.ops_api.depth import StreamDepth, pipeline_depths

DEDUP_STATS_MAX_AGE_S = 15.0


def dedup_stats(backend: OpsBackend) -> dict[str, Any]:
    """Keys and memory under ``dedup:``: a SCAN of the whole cache, so reused for a few seconds
    (Prometheus scrapes every 15-30 s; a large cache must not be walked on every request)."""
    now = time.monotonic()
    cached = backend.dedup_stats_cache
    if cached is not None and now - cached[0] < DEDUP_STATS_MAX_AGE_S:
        return cached[1]
    stats = backend.dedup.stats()
    backend.dedup_stats_cache = (now, stats)
    return stats


def update_stream_gauges(backend: OpsBackend) -> list[StreamDepth]:
    roles = backend.settings.streams_by_role
    depths = pipeline_depths(backend.redis, list(roles.values()))
    for role, depth in zip(roles, depths, strict=True):
        stream = {"stream": depth.stream, "stream_role": role}
        metrics.STREAM_LENGTH.labels(**stream).set(depth.length)
        metrics.DLQ_LENGTH.labels(**stream).set(depth.dlq_length)
        for group in depth.groups:
            metrics.STREAM_LAG.labels(**stream, group=group.name).set(group.lag)
            metrics.STREAM_PENDING.labels(**stream, group=group.name).set(group.pending)
            metrics.STREAM_CONSUMERS.labels(**stream, group=group.name).set(group.consumers)
        if not any(g.name == backend.settings.redis_group_name for g in depth.groups):
            # No consumer group yet: nobody has read anything, so everything is lag. The
            # autoscalers must see that backlog before the first worker ever starts.
            group = backend.settings.redis_group_name
            metrics.STREAM_LAG.labels(**stream, group=group).set(depth.length)
            metrics.STREAM_PENDING.labels(**stream, group=group).set(0)
            metrics.STREAM_CONSUMERS.labels(**stream, group=group).set(0)
    return depths


def update_dedup_gauges(backend: OpsBackend) -> None:
    dedup = dedup_stats(backend)
    metrics.DEDUP_KEYS.set(dedup.get("keys", 0))
    metrics.DEDUP_MEMORY_BYTES.set(dedup.get("memory_bytes", 0))


def clear_redis_gauges() -> None:
    """Drop the stream figures read from Redis (while it is unreachable: no stale backlog)."""
    for gauge in (metrics.STREAM_LENGTH, metrics.DLQ_LENGTH, metrics.STREAM_LAG, metrics.STREAM_PENDING,
                  metrics.STREAM_CONSUMERS):
        gauge.clear()
