"""``python -m bench [--quick] [--out DIR] [--only FIGURES] [--device cpu|cuda] [--pack P]``.

Writes ``DIR/latest.json`` and ``DIR/latest.md`` (default bench/results) and prints the table.
Every figure is a ratio or a median measured within this one run: the machines are shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import load_average, machine, rounded

FIGURES = ("pipeline", "memory", "embed", "stages", "dedup", "search", "options")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench")


@dataclass(frozen=True)
class Plan:
    """How much of everything to measure (full: 12-16 min on a busy 2-core machine; quick: 1-2 min)."""

    images: int
    probe_images: int
    pipeline_repeats: int
    embed_crops: int
    embed_batches: tuple[int, ...]
    embed_repeats: int
    stage_images: int
    stage_batches: tuple[int, ...]
    stage_repeats: int
    dedup_cached: int
    dedup_tenants: int
    dedup_checks_per_client: int
    dedup_repeats: int
    dedup_pairs_per_distance: int
    dedup_pair_attempts: int
    dedup_flip_pairs: int
    search_sizes: tuple[int, ...]
    search_queries: tuple[int, ...]
    option_images: int
    option_repeats: int
    memory_images: int
    profile: bool


FULL = Plan(
    images=120,
    probe_images=12,
    pipeline_repeats=3,
    embed_crops=64,
    embed_batches=(1, 4, 8, 32),
    embed_repeats=3,
    stage_images=32,
    stage_batches=(1, 8, 32),
    stage_repeats=3,
    dedup_cached=100_000,
    dedup_tenants=100,
    dedup_checks_per_client=2000,
    dedup_repeats=3,
    dedup_pairs_per_distance=25,
    dedup_pair_attempts=4000,
    dedup_flip_pairs=100,
    search_sizes=(10_000, 100_000, 1_000_000),
    search_queries=(200, 200, 100),
    option_images=40,
    option_repeats=3,
    memory_images=334,  # three runs: about 1,000 images through the pipeline
    profile=True,
)
QUICK = Plan(
    images=24,
    probe_images=8,
    pipeline_repeats=1,
    embed_crops=32,
    embed_batches=(1, 8, 32),
    embed_repeats=2,
    stage_images=8,
    stage_batches=(1, 8),
    stage_repeats=1,
    dedup_cached=10_000,
    dedup_tenants=20,
    dedup_checks_per_client=500,
    dedup_repeats=2,
    dedup_pairs_per_distance=6,
    dedup_pair_attempts=600,
    dedup_flip_pairs=20,
    search_sizes=(2_000, 10_000),
    search_queries=(30, 30),
    option_images=10,
    option_repeats=1,
    memory_images=12,
    profile=True,
)
# The smallest run that still exercises every figure (tests/bench/test_bench_smoke.py).
SMOKE = Plan(
    images=10,
    probe_images=3,
    pipeline_repeats=1,
    embed_crops=8,
    embed_batches=(1, 4),
    embed_repeats=1,
    stage_images=4,
    stage_batches=(1, 4),
    stage_repeats=1,
    dedup_cached=2_000,
    dedup_tenants=10,
    dedup_checks_per_client=200,
    dedup_repeats=1,
    dedup_pairs_per_distance=3,
    dedup_pair_attempts=300,
    dedup_flip_pairs=5,
    search_sizes=(500, 2_000),
    search_queries=(5, 3),
    option_images=4,
    option_repeats=1,
    memory_images=3,
    profile=True,
)
GPU_STAGE_BATCHES = (1, 32, 64)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="the ~2 minute version (also BENCH_QUICK=1)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: only checks that everything runs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where latest.json/latest.md go")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {FIGURES}")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=os.environ.get("BENCH_DEVICE", "cpu"))
    parser.add_argument("--pack", default=os.environ.get("BENCH_PACK", "buffalo_sc"))
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="thread budget: the cores the bare loop and the pipeline may use",
    )
    parser.add_argument(
        "--pipeline-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the pipeline's services (repeatable)",
    )
    parser.add_argument(
        "--whatif",
        default="",
        metavar="PATCHES",
        help="run the pipeline's services with proposed changes applied in memory (bench/whatif.py): "
        "decode,aspect,nospin",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the per-stage cProfile")
    parser.add_argument(
        "--images", type=int, default=None, help="images per pipeline run (default: the plan's)"
    )
    parser.add_argument(
        "--replicas",
        default="",
        metavar="SERVICE=N,...",
        help="processes per service in the pipeline, e.g. detector=4,embedder=2",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures {sorted(unknown)}; known: {', '.join(FIGURES)}")
    return args


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: services and servers are stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(message)s", datefmt="%H:%M:%S")
    for noisy in ("facepipe", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    plan = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.no_profile:
        plan = Plan(**{**asdict(plan), "profile": False})
    if args.images:
        plan = Plan(**{**asdict(plan), "images": args.images})
    only = [name for name in FIGURES if name in args.only.split(",")]
    if args.device == "cuda":
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels (bench/gpu.sh)
            ort.preload_dlls()
    started = time.perf_counter()
    results: dict[str, object] = {
        "mode": "smoke" if args.smoke else "quick" if args.quick else "full",
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]).strip(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "device": args.device,
        "pack": args.pack,
        "thread_budget": args.threads,
        "plan": asdict(plan),
    }
    from bench import figures, memory_bench

    steps: dict[str, Callable[[], dict[str, object]]] = {
        "pipeline": lambda: figures.pipeline(plan, args),
        "memory": lambda: memory_bench.redis_memory(plan, args),
        "embed": lambda: figures.embed_batch(plan, args),
        "stages": lambda: figures.stages(plan, args),
        "dedup": lambda: figures.dedup(plan),
        "search": lambda: figures.search(plan),
        "options": lambda: figures.options(plan, args),
    }
    timings: dict[str, float] = {}
    for name in only:
        log.info("figure %s (load %s)", name, load_average())
        step_started = time.perf_counter()
        results.update(steps[name]())
        timings[name] = rounded(time.perf_counter() - step_started, 1)
        log.info("figure %s done in %.0f s", name, timings[name])
    if args.device != "cuda":
        results["gpu"] = {"status": "pending: no NVIDIA GPU on this machine; run bench/gpu.sh on one"}
    results["seconds"] = {**timings, "total": rounded(time.perf_counter() - started, 1)}
    from bench.report import markdown

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "latest.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
