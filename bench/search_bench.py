"""Tenant-filtered top-10 face search: the embedded store (Qdrant Edge) against exact numpy.

The corpus is synthetic but shaped like face embeddings: identities × noisy samples of
512-d unit vectors (a sample of the same identity is ~0.6 cosine from another, unrelated
faces ~0), each identity in one of 10 tenants. A query is a fresh sample of a stored
identity (a new photo of a known person), filtered to that identity's tenant. Recall@10
is measured against an exact numpy search of the same tenant's vectors.

The embedded store is the pipeline's own ``VectorIndex(settings)`` (Qdrant Edge at a
temporary ``QDRANT_PATH``), loaded with its ``upsert`` and searched with its ``search``.
It grows from one size to the next; at each size it is measured twice:

- ``as_ingested``: as a serving process holds it after ingesting (never optimized in
  that process: optimize() holds the GIL for its whole run);
- ``optimized``: after ``optimize_store`` (the offline step, its own process's work while
  the stack is stopped: merged segments, int8 copies of the vectors), reopened.

qdrant-client's local mode (the embedded store before Qdrant Edge) is the reference at
sizes up to :data:`LOCAL_MODE_MAX`, searched through the server backend over an in-memory
local-mode client (its brute force is the same in memory or on a path).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import median, percentile, rounded, timed_call
from facepipe.core.settings import load_settings
from facepipe.store.vectors import (
    KEYWORD_INDEXES,
    REMOTE_TIMEOUT_S,
    FacePoint,
    SearchHit,
    VectorIndex,
    point_id,
)
from facepipe.store.vectors.edge_engine import optimize_store

DIM = 512
TENANTS = 10
SAMPLES_PER_IDENTITY = 10
NOISE = 0.8  # per-dimension noise against unit-variance centres: same-identity cosine ~ 1 / (1 + 0.8²)
LOAD_BATCH = 1000
INGEST_BATCH = 32  # faces per upsert, as the indexer writes a batch of messages
LOCAL_MODE_MAX = 100_000
LOCAL_MODE_QUERIES = 20

PRODUCTION_CLIENT = {
    "measured": False,
    "why": "no Qdrant server binary can be installed on this machine (PyPI/Debian only)",
    "client": f"QdrantClient(url=QDRANT_URL, api_key=QDRANT_API_KEY, timeout={REMOTE_TIMEOUT_S}, "
    "check_compatibility=False) (facepipe.store.vectors.server), REST",
    "collection": f"{DIM}-d cosine, HNSW with Qdrant's defaults (m=16, ef_construct=100)",
    "payload_indexes": f"keyword indexes on {', '.join(KEYWORD_INDEXES)}, tenant_id with is_tenant=true "
    "(created by ensure_collection)",
    "query": "query_points(filter tenant_id = T [and site = S], limit=10, with_payload=True)",
}


def size_label(size: int) -> str:
    """10000 -> 10k, 1000000 -> 1m: the suffix of the headline keys."""
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}m"
    return f"{size // 1000}k" if size % 1000 == 0 else str(size)


@dataclass
class Corpus:
    """Face-like vectors, kept per tenant for the exact search; face number n is point n."""

    seed: int = 17
    size: int = 0
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, DIM), np.float32))
    chunks: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    _exact: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @staticmethod
    def identity(number: np.ndarray | int) -> np.ndarray | int:
        return number // SAMPLES_PER_IDENTITY

    @staticmethod
    def tenant(identity: int) -> str:
        return f"tenant{identity % TENANTS}"

    def _sample(self, identities: np.ndarray) -> np.ndarray:
        vectors = (
            self.centres[identities]
            + self.rng.standard_normal((len(identities), DIM)).astype(np.float32) * NOISE
        )
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def grow(self, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(numbers, vectors) in load batches, from the current size to ``stop``."""
        identities_needed = -(-stop // SAMPLES_PER_IDENTITY)
        if identities_needed > len(self.centres):
            extra = self.rng.standard_normal((identities_needed - len(self.centres), DIM)).astype(np.float32)
            self.centres = np.vstack([self.centres, extra])
        for start in range(self.size, stop, LOAD_BATCH):
            numbers = np.arange(start, min(stop, start + LOAD_BATCH))
            vectors = self._sample(self.identity(numbers))  # type: ignore[arg-type]
            tenants = self.identity(numbers) % TENANTS  # type: ignore[operator]
            for t in range(TENANTS):
                mine = tenants == t
                self.chunks.setdefault(t, []).append((numbers[mine], vectors[mine]))
            self.size = int(numbers[-1]) + 1
            yield numbers, vectors
        self._exact.clear()

    def points(self, numbers: np.ndarray, vectors: np.ndarray) -> list[FacePoint]:
        return [
            FacePoint(
                self.tenant(int(self.identity(int(n)))),
                f"{int(n):064x}",
                0,
                vector,
                {"site": "bench.example"},
            )
            for n, vector in zip(numbers, vectors, strict=True)
        ]

    def queries(self, count: int) -> list[tuple[str, np.ndarray, int]]:
        """(tenant, query vector, tenant number): new samples of stored identities."""
        identities = self.rng.integers(0, self.size // SAMPLES_PER_IDENTITY, count)
        return [
            (self.tenant(int(i)), v, int(i) % TENANTS)
            for i, v in zip(identities, self._sample(identities), strict=True)
        ]

    def exact_top10(self, tenant: int, query: np.ndarray) -> tuple[set[str], float]:
        """Point ids of the exact top-10 in the tenant, and the ms numpy took."""
        if tenant not in self._exact:
            numbers = np.concatenate([n for n, _ in self.chunks[tenant]])
            self._exact[tenant] = (numbers, np.vstack([v for _, v in self.chunks[tenant]]))
            self.chunks[tenant] = [self._exact[tenant]]  # one copy of the vectors, not two (2 GB at 1M)
        numbers, vectors = self._exact[tenant]
        started = time.perf_counter()
        scores = vectors @ query
        top = np.argpartition(-scores, 10)[:10]
        took = (time.perf_counter() - started) * 1000
        tenant_id = f"tenant{tenant}"
        return {point_id(tenant_id, f"{int(numbers[i]):064x}", 0) for i in top}, took


def measure(
    search: Callable[[str, np.ndarray], list[SearchHit]], corpus: Corpus, count: int
) -> dict[str, float]:
    """p50/p99 of ``count`` searches and their mean recall@10 against exact numpy."""
    latencies, exact_ms, recalls = [], [], []
    for tenant_id, query, tenant in corpus.queries(count):
        started = time.perf_counter()
        hits = search(tenant_id, query)
        latencies.append((time.perf_counter() - started) * 1000)
        expected, took = corpus.exact_top10(tenant, query)
        exact_ms.append(took)
        recalls.append(len(expected & {hit.id for hit in hits}) / 10)
    return {
        "p50": rounded(median(latencies), 2),
        "p99": rounded(percentile(latencies, 99), 2),
        "recall_at_10": rounded(float(np.mean(recalls)), 4),
        "queries": count,
        "numpy_exact_p50": rounded(median(exact_ms), 2),
        "numpy_exact_p99": rounded(percentile(exact_ms, 99), 2),
    }


@contextlib.contextmanager
def opened(path: Path, collection: str = "bench_faces") -> Iterator[VectorIndex]:
    index = VectorIndex(load_settings(qdrant_url="embedded", qdrant_path=path, qdrant_collection=collection))
    try:
        yield index
    finally:
        index.close()


def ingest_us_per_face(index: VectorIndex, corpus: Corpus, batches: int = 20) -> float:
    """Per-face cost of the indexer's kind of upsert (INGEST_BATCH faces per call) into ``index``."""
    rng = np.random.default_rng(5)
    seconds = 0.0
    for number in range(batches):
        vectors = rng.standard_normal((INGEST_BATCH, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        points = [FacePoint("ingest", f"b{number}", face, v, {"site": "s"}) for face, v in enumerate(vectors)]
        started = time.perf_counter()
        index.upsert(points)
        seconds += time.perf_counter() - started
    return rounded(seconds / (batches * INGEST_BATCH) * 1e6, 1)


def local_mode_path_ingest_us_per_face(workdir: Path, corpus: Corpus) -> float:
    """The same upserts into qdrant-client's local mode on a path: the embedded store before."""
    from qdrant_client import QdrantClient

    from facepipe.store.vectors.server import ServerVectorIndex

    settings = load_settings(qdrant_url="http://unused", qdrant_collection="bench_upsert")
    index = ServerVectorIndex(settings, client=QdrantClient(path=str(workdir / "local-path")))
    try:
        index.ensure_collection(DIM)
        return ingest_us_per_face(index, corpus)
    finally:
        index.close()


def local_mode_figure(sizes: Sequence[int], queries: Sequence[int], seed: int) -> dict[str, object]:
    """The reference: the same corpus in qdrant-client's local mode (in memory), via the server backend."""
    from qdrant_client import QdrantClient

    from facepipe.store.vectors.server import ServerVectorIndex

    corpus = Corpus(seed)  # the same seed: the same faces and queries as the embedded store's
    index = ServerVectorIndex(
        load_settings(qdrant_url="http://unused", qdrant_collection="bench_faces"),
        client=QdrantClient(":memory:"),
    )
    results: dict[str, object] = {}
    try:
        index.ensure_collection(DIM)
        # Local mode warns above 20,000 points that it is slow: that is what is measured.
        warnings.filterwarnings("ignore", message="Local mode is not recommended")
        for size, count in zip(sizes, queries, strict=True):
            for numbers, vectors in corpus.grow(size):
                index.upsert(corpus.points(numbers, vectors))
            # Its brute force takes seconds a query at 100k: fewer of them.
            results[str(size)] = measure(
                lambda t, q: index.search(t, q), corpus, min(count, LOCAL_MODE_QUERIES)
            )
    finally:
        index.close()
    return results


def search_figure(sizes: Sequence[int], queries: Sequence[int], seed: int = 17) -> dict[str, object]:
    corpus = Corpus(seed)
    embedded: dict[str, dict[str, object]] = {}
    load_seconds = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        path = Path(tmp) / "qdrant"
        with opened(path) as index:
            index.ensure_collection(DIM)
            ingest_edge = ingest_us_per_face(index, corpus)
            index.delete_tenant("ingest")
        for size, count in zip(sizes, queries, strict=True):
            with opened(path) as index:
                started = time.perf_counter()
                for numbers, vectors in corpus.grow(size):
                    index.upsert(corpus.points(numbers, vectors))
                load_seconds += time.perf_counter() - started
                figure: dict[str, object] = {
                    "as_ingested": measure(lambda t, q: index.search(t, q), corpus, count)
                }
            figure["optimize_s"] = rounded(timed_call(lambda: optimize_store(path))[1], 1)
            started = time.perf_counter()
            with opened(path) as index:
                figure["open_s"] = rounded(time.perf_counter() - started, 2)  # load + WAL replay + warm-up
                figure["optimized"] = measure(lambda t, q: index.search(t, q), corpus, count)
            embedded[str(size)] = figure
        ingest_local = local_mode_path_ingest_us_per_face(Path(tmp), Corpus(seed))
    local = [(size, count) for size, count in zip(sizes, queries, strict=True) if size <= LOCAL_MODE_MAX]
    return {
        "corpus": {
            "dim": DIM,
            "tenants": TENANTS,
            "samples_per_identity": SAMPLES_PER_IDENTITY,
            "same_identity_cosine": round(1 / (1 + NOISE**2), 2),
        },
        "embedded": embedded,
        "embedded_load_points_per_s": rounded(corpus.size / load_seconds, 1),
        "local_mode": local_mode_figure([s for s, _ in local], [c for _, c in local], seed),
        "ingest_us_per_face": {
            "embedded": ingest_edge,
            "local_mode_path": ingest_local,
            "faces_per_upsert": INGEST_BATCH,
        },
        "production_client": PRODUCTION_CLIENT,
    }
