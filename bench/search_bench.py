"""Top-10 tenant-filtered search latency in the embedded vector store (qdrant-client local mode).

The index is the pipeline's own :class:`facepipe.store.vectors.VectorIndex` and searches go
through its ``search()`` (tenant filter, payloads returned). Points are loaded into local
mode's in-memory form: a ``QDRANT_PATH`` store keeps the same structures in memory and searches
them the same way, but writes each point to SQLite with its own commit (measured separately
as ``embedded_path_upsert_points_per_s``), which would make loading 100k points take minutes.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient

from bench.common import median, percentile, rounded
from facepipe.core.settings import load_settings
from facepipe.store.vectors import KEYWORD_INDEXES, REMOTE_TIMEOUT_S, FacePoint, VectorIndex, point_id

DIM = 512
TENANTS = 10

PRODUCTION_CLIENT = {
    "measured": False,
    "why": "no Qdrant server binary can be installed on this machine (PyPI/Debian only); "
    "the figures above are qdrant-client's embedded local mode",
    "client": f"QdrantClient(url=QDRANT_URL, api_key=QDRANT_API_KEY, timeout={REMOTE_TIMEOUT_S}, "
    "check_compatibility=False) (facepipe.store.vectors.VectorIndex), REST",
    "collection": f"{DIM}-d cosine, HNSW with Qdrant's defaults (m=16, ef_construct=100)",
    "payload_indexes": f"keyword indexes on {', '.join(KEYWORD_INDEXES)} (created by ensure_collection)",
    "query": "query_points(filter tenant_id = T [and site = S], limit=10, with_payload=True)",
    "recommended": "tenant_id index with is_tenant=True (Qdrant >= 1.11 groups each tenant's points); "
    "prefer_grpc=True for lower per-call overhead; hnsw_ef 64-128 for top-10",
}


def _vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _payload(number: int) -> dict[str, object]:
    sha = f"{number:064x}"
    return {
        "tenant_id": f"tenant{number % TENANTS}",
        "site": f"site{number % 7}.example",
        "image_sha256": sha,
        "face_index": 0,
        "phash_prefix": f"{number % 65536:04x}",
        "det_score": 0.9,
        "url": f"https://site.example/{number}.jpg",
    }


def memory_index(workdir: Path) -> VectorIndex:
    """The pipeline's VectorIndex over an in-memory local-mode client (see module doc)."""
    settings = load_settings(
        qdrant_url="embedded", qdrant_path=workdir / "unused", qdrant_collection="bench_faces"
    )
    index = VectorIndex(settings)
    index.client.close()
    index.client = QdrantClient(":memory:")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index.ensure_collection(DIM)
    return index


def load_points(index: VectorIndex, start: int, stop: int, rng: np.random.Generator) -> np.ndarray:
    vectors = _vectors(rng, stop - start)
    index.client.upload_collection(
        index.collection,
        vectors=vectors,
        payload=(_payload(n) for n in range(start, stop)),
        ids=[point_id(f"tenant{n % TENANTS}", f"{n:064x}", 0) for n in range(start, stop)],
        batch_size=2000,
        wait=True,
    )
    return vectors


def latency_ms(
    index: VectorIndex, stored: np.ndarray, queries: int, rng: np.random.Generator
) -> dict[str, float]:
    """p50/p99 of ``queries`` top-10 searches of one tenant each, near a stored face."""
    samples = []
    for number in range(queries):
        row = int(rng.integers(0, len(stored)))
        query = stored[row] + rng.normal(0, 0.02, DIM).astype(np.float32)
        started = time.perf_counter()
        hits = index.search(f"tenant{number % TENANTS}", query, top_k=10)
        samples.append((time.perf_counter() - started) * 1000)
        if len(hits) != 10:
            raise RuntimeError(f"expected 10 hits, got {len(hits)}")
    return {
        "p50": rounded(median(samples), 2),
        "p99": rounded(percentile(samples, 99), 2),
        "queries": queries,
    }


def path_upsert_rate(points: int = 60) -> float:
    """Points/s the QDRANT_PATH store writes (one upsert call, as the indexer makes per batch)."""
    rng = np.random.default_rng(3)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            qdrant_url="embedded", qdrant_path=Path(tmp) / "qdrant", qdrant_collection="bench_upsert"
        )
        index = VectorIndex(settings)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                index.ensure_collection(DIM)
            batch = [
                FacePoint(f"tenant{n % TENANTS}", f"{n:064x}", 0, vector, {"site": "x"})
                for n, vector in enumerate(_vectors(rng, points))
            ]
            started = time.perf_counter()
            index.upsert(batch)
            return points / (time.perf_counter() - started)
        finally:
            index.close()


def search_figure(sizes: Sequence[int], queries: Sequence[int], seed: int = 17) -> dict[str, object]:
    """Latency at each size (the index grows from one size to the next)."""
    rng = np.random.default_rng(seed)
    results: dict[str, object] = {}
    per_tenant: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        index = memory_index(Path(tmp))
        try:
            loaded = 0
            stored: list[np.ndarray] = []
            load_seconds = 0.0
            for size, count in zip(sizes, queries, strict=True):
                started = time.perf_counter()
                stored.append(load_points(index, loaded, size, rng))
                load_seconds += time.perf_counter() - started
                loaded = size
                results[str(size)] = latency_ms(index, np.vstack(stored), count, rng)
                results[str(size)]["tenants"] = TENANTS
            results["load_points_per_s"] = rounded(loaded / load_seconds, 1)
        finally:
            index.close()
        # The same tenant's points alone in a collection, searched without a filter: what
        # one collection per tenant would cost in embedded mode.
        largest = sizes[-1] // TENANTS
        solo = memory_index(Path(tmp) / "solo")
        try:
            vectors = load_points(solo, 0, largest, rng)
            samples = []
            for _ in range(min(50, max(queries))):
                started = time.perf_counter()
                solo.client.query_points(
                    solo.collection,
                    query=vectors[int(rng.integers(0, largest))].tolist(),
                    limit=10,
                    with_payload=True,
                )
                samples.append((time.perf_counter() - started) * 1000)
            per_tenant = {
                "points": largest,
                "p50": rounded(median(samples), 2),
                "p99": rounded(percentile(samples, 99), 2),
                "queries": len(samples),
            }
        finally:
            solo.close()
    return {
        "embedded": results,
        "embedded_one_collection_per_tenant_unfiltered": per_tenant,
        "embedded_path_upsert_points_per_s": rounded(path_upsert_rate(), 1),
        "production_client": PRODUCTION_CLIENT,
    }
