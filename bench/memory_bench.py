"""Redis memory at steady state: it must not grow with the images processed.

The real pipeline (``RunningPipeline``, default settings: finished stream entries are trimmed)
runs the same images several times, each time for a fresh tenant; after each run, once the
workers have trimmed their input streams, Redis's memory is read. The dedup cache grows with
every face remembered until its entries expire (DEDUP_TTL_SECONDS), by design, so it is
reported apart; everything else must stay flat. ``STREAM_RETENTION_MS=-1`` (never trim, the
Phase 3 behaviour) is what it would be otherwise: each image's entries (its crops and
embeddings) stay in the streams for ever.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from bench.common import rounded
from bench.images import build_image_set
from bench.pipeline_bench import PipelineConfig, RunningPipeline
from facepipe.core.settings import Settings

if TYPE_CHECKING:
    from bench.__main__ import Plan

RUNS = 3


def _bytes(client: redis.Redis, keys: list[str]) -> int:
    return sum(int(client.memory_usage(key) or 0) for key in keys)


def _wait_trimmed(client: redis.Redis, settings: Settings, timeout_s: float = 120.0) -> int:
    """Until the pipeline streams hold nothing (the workers trim when idle); entries left."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = sum(int(client.xlen(stream)) for stream in settings.pipeline_streams)
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _snapshot(client: redis.Redis, settings: Settings) -> dict[str, int]:
    client.execute_command("MEMORY", "PURGE")
    dedup = [str(key) for key in client.scan_iter("dedup:*", count=1000)]
    return {
        "used_bytes": int(client.info("memory")["used_memory"]),
        "stream_entries": sum(int(client.xlen(stream)) for stream in settings.pipeline_streams),
        "stream_bytes": _bytes(client, list(settings.pipeline_streams)),
        "dedup_bytes": _bytes(client, dedup),
    }


def redis_memory(plan: Plan, args: argparse.Namespace) -> dict[str, object]:
    images = build_image_set(plan.memory_images)
    config = PipelineConfig(pack=args.pack, device=args.device, stream_retention_ms=0)
    snapshots: list[dict[str, int]] = []
    with (
        tempfile.TemporaryDirectory(prefix="facepipe-bench-memory-") as tmp,
        RunningPipeline(Path(tmp), config, images) as running,
    ):
        assert running.client is not None and running.settings is not None
        for run in range(RUNS):
            running.run(f"memory{run}")
            _wait_trimmed(running.client, running.settings)
            snapshots.append(_snapshot(running.client, running.settings))
    first, last = snapshots[0], snapshots[-1]
    later_images = plan.memory_images * (RUNS - 1)
    other_growth = (last["used_bytes"] - last["dedup_bytes"]) - (first["used_bytes"] - first["dedup_bytes"])
    return {
        "redis_memory_growth_bytes_per_image": rounded(other_growth / later_images, 1),
        "redis_memory": {
            "images_per_run": plan.memory_images,
            "runs": RUNS,
            "after_each_run": snapshots,
            "dedup_growth_bytes_per_image": rounded(
                (last["dedup_bytes"] - first["dedup_bytes"]) / later_images, 1
            ),
            "stream_retention_ms": 0,
        },
    }
