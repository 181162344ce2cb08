"""latest.json → the Markdown table printed by ``make bench`` (and kept as latest.md)."""

from __future__ import annotations

from typing import Any

GOALS = {
    "pipeline_vs_bare_ratio": 0.85,
    "pipeline_vs_bare_cpu_ratio": 0.85,
    "embed_batch_speedup": 1.3,
    "dedup_checks_per_s": 20_000,
}
SEARCH_P99_GOALS_MS = {"100k": 10, "1m": 50}


def _verdict(key: str, value: Any) -> str:
    goal = GOALS.get(key)
    if goal is None or not isinstance(value, int | float):
        return ""
    return "met" if value >= goal else "**not met**"


def _pct(shares: dict[str, float]) -> str:
    ordered = sorted(shares.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {share * 100:.0f}%" for name, share in ordered)


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if value is None else str(value)


def _pairs(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def _headline(r: dict[str, Any]) -> list[str]:
    rows = ["| figure | value | detail | goal | |", "|---|---|---|---|---|"]
    if "pipeline_vs_bare_ratio" in r:
        p, b = r["pipeline"], r["bare"]
        value = r["pipeline_vs_bare_ratio"]
        rows.append(
            f"| pipeline_vs_bare_ratio | {value:.2f} | pipeline {p['images_per_s']:.2f} images/s vs bare "
            f"models {b['images_per_s']:.2f} images/s ({b['ort_threads']} ORT thread(s)); median of "
            f"{len(p['runs_images_per_s'])} x {p['images_per_run']} images; "
            f"per repeat {p['ratio_per_repeat']} "
            f"| >= 0.85 | {_verdict('pipeline_vs_bare_ratio', value)} |"
        )
        value = r["pipeline_vs_bare_cpu_ratio"]
        rows.append(
            f"| pipeline_vs_bare_cpu_ratio | {value:.2f} | CPU per image: bare {b['cpu_ms_per_image']} ms, "
            f"pipeline {p['cpu_ms_per_image']} ms (services + Redis + SeaweedFS) | >= 0.85 | "
            f"{_verdict('pipeline_vs_bare_cpu_ratio', value)} |"
        )
    if "redis_memory_growth_bytes_per_image" in r:
        m = r["redis_memory"]
        after = m["after_each_run"]
        rows.append(
            f"| redis_memory_growth_bytes_per_image | {r['redis_memory_growth_bytes_per_image']:,.1f} | "
            f"Redis memory besides the dedup cache, {m['runs']} runs of {m['images_per_run']} images: "
            f"{', '.join(_num(s['used_bytes'] - s['dedup_bytes'], 0) for s in after)} B; streams hold "
            f"{', '.join(str(s['stream_entries']) for s in after)} entries after each run (finished "
            f"entries trimmed); the dedup cache grows {m['dedup_growth_bytes_per_image']:,.0f} B per image "
            f"until DEDUP_TTL_SECONDS | flat | |"
        )
    if "embed_batch_speedup" in r:
        e = r["embed_batch"]
        big = str(e["speedup_batch"])
        value = r["embed_batch_speedup"]
        rows.append(
            f"| embed_batch_speedup | {value:.2f} | batch {big}: {e['faces_per_s'][big]} faces/s, batch 1: "
            f"{e['faces_per_s']['1']} faces/s ({e['ort_threads']} ORT threads) | >= 1.3 | "
            f"{_verdict('embed_batch_speedup', value)} |"
        )
    if "dedup_checks_per_s" in r:
        d = r["dedup"]
        cfg = d["best_configuration"]
        value = r["dedup_checks_per_s"]
        rows.append(
            f"| dedup_checks_per_s | {value:,.0f} | one Redis's capacity (1 s / Redis main-thread CPU per "
            f"check) for the production call, {d['cache']['hashes']:,} hashes cached in "
            f"{d['cache']['tenants']} tenants; "
            f"the indexer's batches of {cfg['messages_per_call']} messages; one message per call: "
            f"{d['one_message_per_call_checks_per_s']:,.0f}/s; the all-in-Redis script path: "
            f"{d['script_path_checks_per_s']:,.0f}/s; {cfg['clients']} Python client processes on this "
            f"machine's cores reached {d['clients_checks_per_s']:,.0f}/s (client-bound) | >= 20,000 | "
            f"{_verdict('dedup_checks_per_s', value)} |"
        )
    if "search" in r:
        rows += _search_rows(r)
    if "status" in r.get("gpu", {}):
        rows.append(
            f"| GPU (bench/gpu.sh) | pending | {r['gpu']['status']} | >= 1,000 images/s (H200) | pending |"
        )
    return rows


def _search_rows(r: dict[str, Any]) -> list[str]:
    """One row per size: the embedded store served (after the offline optimize) and as ingested."""
    from bench.search_bench import size_label

    rows = []
    search = r["search"]
    for size, figure in search["embedded"].items():
        label, served, ingested = size_label(int(size)), figure["optimized"], figure["as_ingested"]
        local = search["local_mode"].get(size)
        reference = (
            f"; qdrant-client local mode p50 {local['p50']:,.0f} / p99 {local['p99']:,.0f} ms, recall "
            f"{local['recall_at_10']:.2f} ({local['queries']} queries)"
            if local
            else ""
        )
        value = served["p99"]
        goal = SEARCH_P99_GOALS_MS.get(label)
        verdict = (
            ""
            if goal is None
            else "met"
            if value < goal and served["recall_at_10"] >= 0.99
            else "**not met**"
        )
        rows.append(
            f"| search_p99_ms_{label} | {value:.1f} | Qdrant Edge, top-10 filtered to 1 of 10 tenants, "
            f"{served['queries']} queries: p50 {served['p50']:.1f} ms, "
            f"recall@10 {served['recall_at_10']:.3f} "
            f"after the offline optimize ({figure['optimize_s']} s); as ingested p50 {ingested['p50']:.1f} / "
            f"p99 {ingested['p99']:.1f} ms, recall {ingested['recall_at_10']:.3f}; numpy exact p99 "
            f"{served['numpy_exact_p99']:.1f} ms{reference} | "
            f"{'' if goal is None else f'< {goal} ms, recall >= 0.99'} | {verdict} |"
        )
    ingest = search["ingest_us_per_face"]
    rows.append(
        f"| vector ingest, us per face | {ingest['embedded']:,.0f} | upserts of {ingest['faces_per_upsert']} "
        f"faces; qdrant-client local mode on a path (before): {ingest['local_mode_path']:,.0f} us | "
        f"not slower | {'met' if ingest['embedded'] <= ingest['local_mode_path'] else '**not met**'} |"
    )
    return rows


def _pipeline_detail(r: dict[str, Any]) -> list[str]:
    p, b = r["pipeline"], r["bare"]
    cpu, faces = p["cpu"], p["faces_per_run"]
    lines = [
        "### Where the time goes",
        "",
        f"- Pipeline CPU by process: {_pct(cpu['share'])}. Our processes kept {cpu['pipeline_cores_busy']} "
        f"cores busy; other processes on the machine {cpu['other_processes_cores_busy']}.",
        f"- Pipeline stage time, ms per image (wall time inside each step, threads overlap): "
        f"{_pairs(p['stage_ms_per_image'])}.",
        f"- Bare loop: {_pct(b['stage_share'])} (ms per image: {_pairs(b['stage_ms_per_image'])}).",
        f"- Faces per run: pipeline indexed {faces['indexed']}, dup-skipped {faces['dup_skipped']}, rejected "
        f"{faces['rejected']}, DLQ {faces['dlq']}; bare loop detected {b['faces_detected_per_run']}, "
        f"embedded "
        f"{b['faces_embedded_per_run']}.",
    ]
    for stage, info in p.get("profile", {}).items():
        top = ", ".join(f"{row['function']} {row['share'] * 100:.0f}%" for row in info["top_self_time"][:5])
        lines.append(f"- Profile {stage} ({info['ms_per_image']} ms/image, one thread): {top}.")
    return [*lines, ""]


def _stage_detail(r: dict[str, Any]) -> list[str]:
    s = r["stage_throughput"]
    lines = [
        "### Per-stage throughput by batch size",
        "",
        f"{s['provider']}, {s['ort_threads']} ORT threads, {s['images']} images, {s['faces']} faces.",
        "",
        "| batch | detection images/s | embedding faces/s |",
        "|---|---|---|",
    ]
    for batch, rate in s["embedding_faces_per_s"].items():
        lines.append(f"| {batch} | {_num(s['detection_images_per_s'].get(batch), 1)} | {_num(rate, 1)} |")
    if "embed_batch" in r:
        lines.append("")
        lines.append(
            f"Embedder alone ({r['embed_batch']['ort_threads']} threads), faces/s by batch: "
            f"{_pairs(r['embed_batch']['faces_per_s'])}."
        )
        if "embed_batch_one_thread" in r:
            lines.append(f"One thread: {_pairs(r['embed_batch_one_thread']['faces_per_s'])}.")
    return [*lines, ""]


def _dedup_detail(r: dict[str, Any]) -> list[str]:
    d = r["dedup"]
    flips = d["random_flips"]
    lines = [
        "### Dedup recall at threshold 8 (real face-crop pHash pairs)",
        "",
        "| distance | pairs | ours (multi-index) | runbook prefix | random flips: ours / prefix |",
        "|---|---|---|---|---|",
    ]
    for dist, ours in r["dedup_recall_by_distance"].items():
        lines.append(
            f"| {dist} | {d['recall_pairs_by_distance'][dist]} | {_num(ours)} | "
            f"{_num(r['seed_prefix_recall_by_distance'][dist])} | {_num(flips['ours'][dist])} / "
            f"{_num(flips['seed_prefix'][dist])} |"
        )
    runs = "; ".join(
        f"{run['path']}, {run['clients']} client(s), {run['messages_per_call']} message(s)/call: "
        f"{run['checks_per_s']:,.0f}/s, Redis {run['server_us_per_check']} us/check"
        for run in d["throughput_runs"]
    )
    return [*lines, "", f"Throughput runs: {runs}.", ""]


def _options_detail(r: dict[str, Any]) -> list[str]:
    o = r["optimisations"]
    lines = ["### Optimisation candidates (A/B, same process)", ""]
    for name, figure in o.items():
        if "skipped" in figure:
            lines.append(f"- {name}: skipped ({figure['skipped']}).")
            continue
        speed = next(v for k, v in figure.items() if k.startswith("speedup_vs_"))
        extra = {
            k: v
            for k, v in figure.items()
            if k not in ("ms_per_item", "runs") and not k.startswith("speedup")
        }
        lines.append(
            f"- {name}: ms per item {_pairs(figure['ms_per_item'])}; speedup {_pairs(speed)}; "
            f"{_pairs(extra)}."
        )
    return [*lines, ""]


def markdown(r: dict[str, Any]) -> str:
    m = r.get("machine", {})
    lines = [
        f"## Benchmark results ({r.get('mode')} run, {r.get('started_at')})",
        "",
        f"Machine: {m.get('cpu_model')}, {m.get('cpu_count')} cores, {m.get('memory_gib')} GiB, "
        f"load average at "
        f"start {m.get('load_avg_at_start')}; Python {m.get('python')}, onnxruntime {m.get('onnxruntime')}. "
        f"Pack `{r.get('pack')}` on {r.get('device')}, thread budget {r.get('thread_budget')}.",
        f"Command: `{r.get('command')}`; took {r.get('seconds', {}).get('total')} s.",
        "",
        *_headline(r),
        "",
    ]
    if "pipeline" in r:
        lines += _pipeline_detail(r)
    if "stage_throughput" in r:
        lines += _stage_detail(r)
    if "dedup" in r:
        lines += _dedup_detail(r)
    if "optimisations" in r:
        lines += _options_detail(r)
    return "\n".join(lines)
