"""The five figures of ``python -m bench``; each returns the keys it adds to latest.json."""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import pstats
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import median, rounded
from bench.images import BenchImage, build_image_set
from bench.models_bench import (
    embed_batch_figure,
    face_crops,
    load_models,
    model_settings,
    run_bare,
    stage_shares,
    stage_throughput_figure,
)
from bench.pipeline_bench import PipelineConfig, PipelineRun, RunningPipeline, cpu_shares
from facepipe.vision.imaging import ImageLimits, QualityThresholds, decode_image

if TYPE_CHECKING:
    from bench.__main__ import Plan

log = logging.getLogger("bench")


# --- 1. pipeline vs bare models ------------------------------------------------------------------


def pipeline(plan: Plan, args: argparse.Namespace) -> dict[str, object]:
    from bench.whatif import applied

    # What-if patches apply to the bare loop too: both sides run the same code.
    with applied(list(filter(None, args.whatif.split(",")))):
        return _pipeline(plan, args)


def _pipeline(plan: Plan, args: argparse.Namespace) -> dict[str, object]:
    images = build_image_set(plan.images)
    limits = ImageLimits.from_settings(model_settings(args.pack, args.device, 1))
    thresholds = QualityThresholds.from_settings(model_settings(args.pack, args.device, 1))

    # The baseline gets the best ORT thread count within the budget (1 or all cores).
    candidates = {
        threads: load_models(model_settings(args.pack, args.device, threads))
        for threads in sorted({1, args.threads})
    }
    probe: dict[int, list[float]] = {threads: [] for threads in candidates}
    for _ in range(2):
        for threads, (detector, embedder) in candidates.items():
            probe[threads].append(
                run_bare(detector, embedder, images[: plan.probe_images], limits, thresholds).images_per_s
            )
    bare_threads = max(probe, key=lambda threads: median(probe[threads]))
    detector, embedder = candidates[bare_threads]
    log.info(
        "bare loop: %d ORT thread(s) (probe %s)",
        bare_threads,
        {t: rounded(median(v), 2) for t, v in probe.items()},
    )

    extra_env = dict(item.split("=", 1) for item in args.pipeline_env)
    # One intra-op thread per session: the services run side by side (and the detector handles
    # MAX_WORKER_CONCURRENCY messages at once), so the processes, not ORT, spread over the cores.
    replicas = {
        name: int(count) for name, count in (item.split("=", 1) for item in args.replicas.split(",") if item)
    }
    config = PipelineConfig(
        pack=args.pack,
        device=args.device,
        ort_threads=int(extra_env.pop("ORT_INTRA_OP_THREADS", "1")),
        extra_env=extra_env,
        replicas=replicas,
        whatif=tuple(filter(None, args.whatif.split(","))),
    )
    bare_runs, pipeline_runs = [], []
    profile: dict[str, object] = {}
    with (
        tempfile.TemporaryDirectory(prefix="facepipe-bench-") as tmp,
        RunningPipeline(Path(tmp), config, images) as running,
    ):
        running.run("warmup", images[:10])
        for repeat in range(plan.pipeline_repeats):
            bare_runs.append(run_bare(detector, embedder, images, limits, thresholds))
            pipeline_runs.append(running.run(f"bench{repeat}"))
            log.info(
                "repeat %d: bare %.2f images/s, pipeline %.2f images/s",
                repeat,
                bare_runs[-1].images_per_s,
                pipeline_runs[-1].images_per_s,
            )
        if plan.profile:
            profile = profile_stages(running, images, Path(tmp), args)
    del candidates, detector, embedder

    bare_ips = median([run.images_per_s for run in bare_runs])
    pipe_ips = median([run.images_per_s for run in pipeline_runs])
    bare_stage = {
        name: sum(run.stage_seconds[name] for run in bare_runs) for name in bare_runs[0].stage_seconds
    }
    combined = _combined(pipeline_runs)
    stage_ms = combined.stage_ms
    # CPU seconds per image: what the pipeline's processes (services, Redis, SeaweedFS) spent
    # against what the bare loop spent. Other people's load on a shared machine changes how
    # much CPU each side gets (and the pipeline, with more runnable threads, gets more), but
    # hardly what one image costs.
    pipeline_cpu = sum(v for k, v in combined.cpu_seconds.items() if k not in ("machine", "bench"))
    bare_cpu_per_image = sum(run.cpu_seconds for run in bare_runs) / sum(run.images for run in bare_runs)
    pipeline_cpu_per_image = pipeline_cpu / combined.images
    return {
        "pipeline_vs_bare_ratio": rounded(pipe_ips / bare_ips),
        "pipeline_vs_bare_cpu_ratio": rounded(bare_cpu_per_image / pipeline_cpu_per_image),
        "pipeline": {
            "images_per_s": rounded(pipe_ips, 2),
            "runs_images_per_s": [rounded(run.images_per_s, 2) for run in pipeline_runs],
            "ratio_per_repeat": [
                rounded(p.images_per_s / b.images_per_s)
                for p, b in zip(pipeline_runs, bare_runs, strict=True)
            ],
            "images_per_run": len(images),
            "faces_per_run": {
                "indexed": pipeline_runs[-1].faces_indexed,
                "dup_skipped": pipeline_runs[-1].faces_dup_skipped,
                "rejected": pipeline_runs[-1].faces_rejected,
                "dlq": pipeline_runs[-1].dlq,
            },
            "services_env": config.env(),
            "processes": config.processes(),
            "whatif_patches": list(config.whatif),
            "cpu": cpu_shares(combined),
            "stage_ms_per_image": {name: rounded(ms / combined.images, 1) for name, ms in stage_ms.items()},
            "stage_share": {name: rounded(ms / sum(stage_ms.values())) for name, ms in stage_ms.items()},
            "cpu_ms_per_image": rounded(pipeline_cpu_per_image * 1000, 1),
            **({"profile": profile} if profile else {}),
        },
        "bare": {
            "images_per_s": rounded(bare_ips, 2),
            "runs_images_per_s": [rounded(run.images_per_s, 2) for run in bare_runs],
            "ort_threads": bare_threads,
            "thread_probe_images_per_s": {str(t): rounded(median(v), 2) for t, v in probe.items()},
            "cpu_ms_per_image": rounded(bare_cpu_per_image * 1000, 1),
            "faces_detected_per_run": bare_runs[-1].faces,
            "faces_embedded_per_run": bare_runs[-1].embedded,
            "stage_share": stage_shares(bare_stage),
            "stage_ms_per_image": {
                name: rounded(s * 1000 / (len(images) * len(bare_runs)), 1) for name, s in bare_stage.items()
            },
        },
    }


def _combined(runs: list[PipelineRun]) -> PipelineRun:
    """All repeats as one run (sums), for CPU and stage shares."""
    first = runs[0]
    return PipelineRun(
        tenant="all",
        images=sum(r.images for r in runs),
        seconds=sum(r.seconds for r in runs),
        acked=sum(r.acked for r in runs),
        dlq=sum(r.dlq for r in runs),
        faces_indexed=sum(r.faces_indexed for r in runs),
        faces_dup_skipped=sum(r.faces_dup_skipped for r in runs),
        faces_rejected=sum(r.faces_rejected for r in runs),
        cpu_seconds={k: sum(r.cpu_seconds.get(k, 0.0) for r in runs) for k in first.cpu_seconds},
        stage_ms={k: sum(r.stage_ms.get(k, 0.0) for r in runs) for k in first.stage_ms},
    )


# --- the profile: each stage's worker loop in this process, under cProfile ----------------------


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


# --- 2. embedder batch speedup, and per-stage throughput at several batch sizes ------------------


def embed_batch(plan: Plan, args: argparse.Namespace) -> dict[str, object]:
    settings = model_settings(args.pack, args.device, args.threads)
    detector, embedder = load_models(settings)
    limits = ImageLimits.from_settings(settings)
    crops = face_crops(detector, build_image_set(min(plan.images, 40)), limits, plan.embed_crops)
    largest = str(max(plan.embed_batches))
    figure = embed_batch_figure(embedder, crops, plan.embed_batches, plan.embed_repeats)
    rates = figure["faces_per_s"]
    result: dict[str, object] = {
        "embed_batch_speedup": rounded(rates[largest] / rates["1"]),
        "embed_batch": {"ort_threads": args.threads, "speedup_batch": int(largest), **figure},
    }
    if args.threads > 1 and args.device == "cpu":
        # (ORT spin-waiting is off in the production session options, so there is no second
        # multi-threaded variant to measure: the figure above is that configuration.)
        single = load_models(model_settings(args.pack, args.device, 1))[1]
        one = embed_batch_figure(single, crops, plan.embed_batches, plan.embed_repeats)
        result["embed_batch_one_thread"] = {
            "speedup": rounded(one["faces_per_s"][largest] / one["faces_per_s"]["1"]),
            **one,
        }
    return result


def stages(plan: Plan, args: argparse.Namespace) -> dict[str, object]:
    from bench.__main__ import GPU_STAGE_BATCHES

    settings = model_settings(args.pack, args.device, args.threads)
    detector, embedder = load_models(settings)
    limits = ImageLimits.from_settings(settings)
    batches = GPU_STAGE_BATCHES if args.device == "cuda" else plan.stage_batches
    images = build_image_set(max(plan.stage_images, max(batches)))
    pixels = [decode_image(image.data, limits) for image in images]
    crops = face_crops(detector, images, limits, max(plan.embed_crops, max(batches)))
    figure = stage_throughput_figure(detector, embedder, pixels, crops, batches, plan.stage_repeats)
    return {"stage_throughput": {"ort_threads": args.threads, "provider": detector.loaded_provider, **figure}}


# --- 3. dedup --------------------------------------------------------------------------------------


def dedup(plan: Plan) -> dict[str, object]:
    from bench import dedup_bench as db
    from facepipe.cli.localservers import start_redis

    with tempfile.TemporaryDirectory(prefix="facepipe-bench-redis-") as tmp:
        server = start_redis(Path(tmp))
        try:
            fill = db.fill_cache(server.url, plan.dedup_cached, plan.dedup_tenants)
            log.info("dedup: %d hashes cached (%.0f/s)", plan.dedup_cached, fill["remembered_per_s"])
            # (clients, faces per message, messages per call, path); the indexer's call is a batch
            # of up to WORKER_BATCH_SIZE (10) messages. Configurations interleaved, repeated: the
            # machine's noise hits each alike, and each figure is a median.
            configs = [
                (1, 2, 1, "script"),
                (1, 2, 1, "optimistic"),
                (1, 2, 10, "optimistic"),
                (2, 2, 10, "optimistic"),
            ]
            runs = [
                db.throughput(
                    server.url,
                    plan.dedup_cached,
                    plan.dedup_tenants,
                    plan.dedup_checks_per_client,
                    clients,
                    faces,
                    per_call,
                    path,
                    seed=len(configs) * repeat + n + 1,
                )
                for repeat in range(plan.dedup_repeats)
                for n, (clients, faces, per_call, path) in enumerate(configs)
            ]
            production = [run for run in runs if run["path"] == "optimistic" and run["messages_per_call"] > 1]
            best = max(production, key=lambda run: run["checks_per_s"])
            settings = model_settings("buffalo_sc", "cpu", 1)
            detector, _ = load_models(settings)
            limits = ImageLimits.from_settings(settings)
            images = build_image_set(min(plan.images, 27))
            samples = db.face_samples(detector, [decode_image(image.data, limits) for image in images])
            pairs = db.crop_pairs(samples, plan.dedup_pairs_per_distance, plan.dedup_pair_attempts)
            crops = db.recall_by_distance(server.url, pairs, "rc")
            flips = db.recall_by_distance(server.url, db.flip_pairs(plan.dedup_flip_pairs), "rf")
        finally:
            server.stop()
    return {
        # One Redis's capacity for the production call: 1 s over its main thread's CPU per check. The
        # clients here share the machine's cores with Redis, so what they reach is client-bound
        # (dedup.clients_checks_per_s); indexers run on other nodes in production.
        "dedup_checks_per_s": _redis_capacity(production),
        "dedup_recall_by_distance": crops["ours"],
        "seed_prefix_recall_by_distance": crops["seed_prefix"],
        "dedup": {
            "basis": "1e6 / median Redis main-thread CPU microseconds per check (production path)",
            "clients_checks_per_s": best["checks_per_s"],
            "best_configuration": {
                k: best[k] for k in ("path", "clients", "faces_per_message", "messages_per_call")
            },
            "script_path_checks_per_s": _redis_capacity([run for run in runs if run["path"] == "script"]),
            "one_message_per_call_checks_per_s": _redis_capacity(
                [run for run in runs if run["path"] == "optimistic" and run["messages_per_call"] == 1]
            ),
            "throughput_runs": runs,
            "cache": fill,
            "layout": db.layout_description(),
            "recall_pairs_by_distance": crops["pairs"],
            "recall_face_samples": len(samples),
            "random_flips": {
                "ours": flips["ours"],
                "seed_prefix": flips["seed_prefix"],
                "pairs_per_distance": plan.dedup_flip_pairs,
            },
        },
    }


def _redis_capacity(runs: list[dict[str, object]]) -> float:
    return rounded(1e6 / median([float(run["server_us_per_check"]) for run in runs]), 1)


# --- 4. search ---------------------------------------------------------------------------------------


def search(plan: Plan) -> dict[str, object]:
    """Headline keys per size: the embedded store as served after the offline optimize, and as ingested."""
    from bench.search_bench import search_figure, size_label

    figure = search_figure(plan.search_sizes, plan.search_queries)
    embedded: dict[str, Any] = figure["embedded"]  # type: ignore[assignment]
    keys: dict[str, object] = {}
    for size in plan.search_sizes:
        label, served, ingested = (
            size_label(size),
            embedded[str(size)]["optimized"],
            embedded[str(size)]["as_ingested"],
        )
        keys[f"search_p99_ms_{label}"] = served["p99"]
        keys[f"search_recall_at_10_{label}"] = served["recall_at_10"]
        keys[f"search_p99_ms_{label}_as_ingested"] = ingested["p99"]
        keys[f"search_recall_at_10_{label}_as_ingested"] = ingested["recall_at_10"]
    return {
        **keys,
        "search_latency_ms": {
            str(size): {k: embedded[str(size)]["optimized"][k] for k in ("p50", "p99")}
            for size in plan.search_sizes
        },
        "search": figure,
    }


# --- 5. optimisation candidates (A/B in one process) -------------------------------------------------


def options(plan: Plan, args: argparse.Namespace) -> dict[str, object]:
    from bench import options_bench as ob

    settings = model_settings(args.pack, args.device, 1)
    detector, _ = load_models(settings)
    limits = ImageLimits.from_settings(settings)
    images = build_image_set(plan.option_images)
    pixels = [decode_image(image.data, limits) for image in images]
    threaded = load_models(model_settings(args.pack, args.device, args.threads))[0]
    return {
        "optimisations": {
            "decode": ob.decode_figure(images, limits, plan.option_repeats),
            "detector_input": ob.detector_input_figure(detector, pixels, plan.option_repeats),
            "ort_spinning": ob.spinning_figure(
                threaded, pixels[: max(4, len(pixels) // 2)], args.threads, plan.option_repeats
            ),
        }
    }
