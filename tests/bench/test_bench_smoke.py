"""`python -m bench --smoke` runs every figure end to end and writes every key (never speed).

The figures themselves are not asserted (the machine is shared); what is asserted is that the
harness ran the real pipeline to completion, wrote sane values, and that the dedup recall it
measured shows the properties the schemes must have (ours exact up to the threshold, nothing
beyond it), which would catch a broken measurement as well as a broken cache.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 8
DISTANCES = [str(d) for d in range(17)]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "latest.json").read_text()), result.stdout, out


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_every_headline_key_is_written_with_a_sane_value(smoke_run: tuple[dict, str, Path]) -> None:
    results, stdout, out = smoke_run
    for key in (
        "pipeline_vs_bare_ratio",
        "pipeline_vs_bare_cpu_ratio",
        "embed_batch_speedup",
        "dedup_checks_per_s",
    ):
        assert _positive(results[key]), (key, results[key])
    assert set(results["search_latency_ms"]) == {"500", "2000"}
    for latency in results["search_latency_ms"].values():
        assert 0 < latency["p50"] <= latency["p99"]
    for label in ("500", "2k"):
        for suffix in ("", "_as_ingested"):
            assert _positive(results[f"search_p99_ms_{label}{suffix}"])
            # No graph: at these sizes the embedded store searches exactly, like numpy.
            assert results[f"search_recall_at_10_{label}{suffix}"] >= 0.99
    search = results["search"]
    assert set(search["local_mode"]) == {"500", "2000"}  # the reference, searched the same way
    assert all(figure["recall_at_10"] >= 0.99 for figure in search["local_mode"].values())
    assert _positive(search["ingest_us_per_face"]["embedded"])
    assert _positive(search["ingest_us_per_face"]["local_mode_path"])
    assert results["gpu"]["status"].startswith("pending")
    table = (out / "latest.md").read_text()
    assert table in stdout  # printed as well as written
    for key in ("pipeline_vs_bare_ratio", "embed_batch_speedup", "dedup_checks_per_s", "search_p99_ms_2k"):
        assert key in table


@pytest.mark.slow
def test_redis_memory_is_measured_and_the_streams_are_trimmed(smoke_run: tuple[dict, str, Path]) -> None:
    results, _stdout, out = smoke_run
    memory = results["redis_memory"]
    assert len(memory["after_each_run"]) == memory["runs"] == 3
    for snapshot in memory["after_each_run"]:
        assert snapshot["stream_entries"] == 0  # every finished entry trimmed
        assert 0 < snapshot["dedup_bytes"] < snapshot["used_bytes"]
    assert isinstance(results["redis_memory_growth_bytes_per_image"], int | float)
    assert "redis_memory_growth_bytes_per_image" in (out / "latest.md").read_text()


@pytest.mark.slow
def test_the_pipeline_run_finished_every_image(smoke_run: tuple[dict, str, Path]) -> None:
    results, _stdout, out = smoke_run
    pipeline = results["pipeline"]
    assert pipeline["images_per_run"] == results["plan"]["images"]
    assert pipeline["faces_per_run"]["dlq"] == 0
    assert pipeline["faces_per_run"]["indexed"] > 0  # the photos have faces: they reached Qdrant
    assert all(_positive(rate) for rate in pipeline["runs_images_per_s"])
    shares = pipeline["cpu"]["share"]
    assert {"detector", "embedder", "indexer", "redis", "seaweedfs"} <= set(shares)
    assert math.isclose(sum(shares.values()), 1.0, abs_tol=0.01)
    assert set(pipeline["profile"]) == {"detector", "embedder", "indexer"}
    assert "onnxruntime" in (out / "profile.txt").read_text()  # inference shows up in the profile


@pytest.mark.slow
def test_recall_by_distance_has_the_schemes_properties(smoke_run: tuple[dict, str, Path]) -> None:
    results, _stdout, _out = smoke_run
    ours, seed = results["dedup_recall_by_distance"], results["seed_prefix_recall_by_distance"]
    pairs = results["dedup"]["recall_pairs_by_distance"]
    assert list(ours) == DISTANCES and list(seed) == DISTANCES
    measured = [d for d in DISTANCES if pairs[d] > 0]
    assert any(int(d) <= THRESHOLD for d in measured) and any(int(d) > THRESHOLD for d in measured)
    for d in DISTANCES:
        if pairs[d] == 0:
            assert ours[d] is None and seed[d] is None
            continue
        assert ours[d] == (1.0 if int(d) <= THRESHOLD else 0.0), (d, ours[d])
        assert 0.0 <= seed[d] <= ours[d]  # the prefix scheme only ever misses
    flips = results["dedup"]["random_flips"]
    assert flips["ours"] == {d: (1.0 if int(d) <= THRESHOLD else 0.0) for d in DISTANCES}
