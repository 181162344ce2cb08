"""The profile of ``python -m bench``: each stage's real worker loop in this process, under cProfile."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from pathlib import Path

from bench.common import rounded
from bench.images import BenchImage
from bench.pipeline_bench import RunningPipeline


def profile_stages(
    running: RunningPipeline, images: list[BenchImage], workdir: Path, args: argparse.Namespace
) -> dict[str, object]:
    """Each stage's real Worker loop over the bench images, one stage at a time, in this process.

    Streams of their own (``profile-queue``) so the running services never see these entries;
    MAX_WORKER_CONCURRENCY=1 keeps every call on the profiled thread. Top self-time functions
    per stage go to the JSON; the full listing to ``profile.txt`` next to it.
    """
    from facepipe.core.settings import load_settings
    from facepipe.core.stats import Stats
    from facepipe.core.worker import Worker, ensure_group
    from facepipe.detector.handler import DetectorHandler
    from facepipe.embedder.handler import EmbedderHandler
    from facepipe.indexer.handler import IndexerHandler

    assert running.settings is not None and running.client is not None
    env = {key.lower(): value for key, value in running.env.items()}
    env.update(
        redis_stream_name="profile-queue",
        max_worker_concurrency=1,
        read_block_ms=200,
        ort_intra_op_threads=1,
        qdrant_path=str(workdir / "qdrant-profile"),
        log_level="WARNING",
    )
    settings = load_settings(**{k: v for k, v in env.items() if k in type(running.settings).model_fields})
    client = running.client
    tenant = "profile"
    pipe = client.pipeline(transaction=False)
    for image in images:
        pipe.xadd(settings.ingest_stream, {"message": json.dumps(running._ingest(tenant, image))})
    pipe.execute()
    done = {
        "detector": lambda: client.xlen(settings.detected_stream) >= len(images),
        "embedder": lambda: client.xlen(settings.embedded_stream) >= len(images),
        "indexer": lambda: (
            sum(
                int(v or 0)
                for v in client.hmget(
                    Stats(client).counters_key(tenant), "worker_msgs_acked", "worker_msgs_dlq"
                )
            )
            >= len(images)
        ),
    }
    factories = {"detector": DetectorHandler, "embedder": EmbedderHandler, "indexer": IndexerHandler}
    listing = io.StringIO()
    summary: dict[str, object] = {}
    for stage, factory in factories.items():
        handler = factory(settings)
        worker = Worker(settings, handler, max_batch=settings.worker_batch_size)
        handler.setup()
        ensure_group(client, handler.input_stream, settings.redis_group_name)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        deadline = time.monotonic() + 300
        profiler.enable()
        while not done[stage]() and time.monotonic() < deadline:
            worker._iteration()
        profiler.disable()
        seconds = time.perf_counter() - started
        handler.close()
        stats = pstats.Stats(profiler, stream=listing)
        listing.write(f"\n===== {stage}: {len(images)} images in {seconds:.2f} s (one thread, cProfile on)\n")
        stats.sort_stats("tottime").print_stats(25)
        summary[stage] = {
            "seconds": rounded(seconds, 2),
            "ms_per_image": rounded(seconds * 1000 / len(images), 1),
            "top_self_time": _top(stats, seconds),
        }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.txt").write_text(listing.getvalue())
    return summary


def _top(stats: pstats.Stats, seconds: float, count: int = 8) -> list[dict[str, object]]:
    rows = []
    for (filename, line, function), (_cc, calls, self_time, _cum, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((self_time, calls, f"{Path(filename).name}:{line}({function})"))
    rows.sort(reverse=True)
    return [
        {
            "function": name,
            "self_s": rounded(self_time, 3),
            "share": rounded(self_time / seconds),
            "calls": calls,
        }
        for self_time, calls, name in rows[:count]
    ]
