"""Qdrant Edge (``qdrant-edge-py``, pinned in libs/store) behind two small classes of ours.

The 0.x API has changed a lot between releases and its type stubs are wrong in places, so
nothing outside this module touches ``qdrant_edge`` except the filter translation in
:mod:`facepipe.store.vectors.edge`. What the engine is and what this module respects:

- One :class:`EdgeCollection` = one Edge shard folder = one Qdrant collection (one
  unnamed vector, payloads, payload indexes, a write-ahead log).
- :class:`EdgeStore` is the folder of collections (``QDRANT_PATH``): ``edge/<name>/``
  per collection, one process at a time (:class:`~facepipe.store.vectors.lock.StoreLock`),
  and a store written by qdrant-client's local mode is migrated on open
  (:mod:`facepipe.store.vectors.migrate`).
- Every update goes through the WAL before it returns, so an acknowledged write survives
  kill -9; the WAL is never disabled (that would also remove Edge's own lock). Segments
  are flushed at most every :data:`FLUSH_INTERVAL_S` so the WAL stays short and a reopen
  replays little.
- ``optimize()`` is never called here: it holds the GIL for its whole run (seconds to
  minutes), which would freeze a serving process. :func:`optimize_store` does it in a
  process of its own while nothing serves the store.
- The first queries after opening are slow (cold pages): a few run on open.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import qdrant_edge as qe

from facepipe.store.vectors.base import CollectionMismatchError, VectorParams, VectorStoreError
from facepipe.store.vectors.lock import StoreInUseError, StoreLock, in_use_message

T = TypeVar("T")
log = logging.getLogger("facepipe.store.vectors")

COLLECTIONS_DIR = "edge"
FLUSH_INTERVAL_S = 5.0
WARMUP_QUERIES = 3
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
_DISTANCES = {
    "cosine": qe.Distance.Cosine,
    "dot": qe.Distance.Dot,
    "euclid": qe.Distance.Euclid,
    "manhattan": qe.Distance.Manhattan,
}
# How a collection is created. Exact search, no graph (m=0): one tenant's points are found
# through the tenant index and scanned (bench/, after the offline optimize, 1M faces in 10
# tenants: p50 ~10-16 ms, recall@10 1.0), while HNSW graphs take minutes to build at that size,
# in optimize(), holding the GIL. The int8 copy of the vectors, built by the offline optimize,
# quarters the memory a scan reads; the best candidates are rescored with the original vectors.
HNSW_M = 0
HNSW_EF_CONSTRUCT = 100
FULL_SCAN_THRESHOLD = 10_000
RESCORE_OVERSAMPLING = 2.0
# One search thread: a tenant's points sit in one optimized segment, so more threads do not
# split the work, and on a busy machine every extra thread a query waits for adds to its tail
# (measured at 100k faces, load 3 on 2 cores, interleaved: p99 2.8 ms with one, 9.4 ms with two).
SEARCH_THREADS = 1
# The engine's message when another open handle holds the shard's WAL.
_WAL_LOCKED = "WouldBlock"
_RESCORED = qe.SearchParams(
    quantization=qe.QuantizationSearchParams(rescore=True, oversampling=RESCORE_OVERSAMPLING)
)


def _call(what: str, fn: Callable[[], T]) -> T:
    """Run an engine call; its errors (plain ``Exception``) become VectorStoreError naming the call."""
    try:
        return fn()
    except Exception as exc:
        raise VectorStoreError(f"Qdrant Edge {what}: {exc}") from exc


def collection_dir_name(name: str) -> str:
    """A collection name that is safe as one folder name (the name is the folder)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"collection name {name!r} is not usable: 1-255 characters of A-Z a-z 0-9 _ . -, without '..'"
        )
    return name


def plain_vector(value: Any) -> list[float] | None:
    """The default (unnamed) vector of a returned point, whichever shape the engine used."""
    if isinstance(value, dict):
        value = value.get("")
    return value if isinstance(value, list) else None


class EdgeCollection:
    """One open Edge shard. Reads run concurrently; writes, flushes and close are serialised."""

    def __init__(self, path: Path, shard: qe.EdgeShard) -> None:
        self.path = path
        self._shard: qe.EdgeShard | None = shard
        self._write_lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._params: VectorParams | None = None

    @classmethod
    def create(cls, path: Path, dim: int, distance: str = "cosine") -> EdgeCollection:
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=int(dim), distance=_DISTANCES[distance]),
            hnsw_config=qe.HnswIndexConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_THRESHOLD
            ),
            quantization_config=qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, always_ram=True),
            max_search_threads=SEARCH_THREADS,
        )
        return cls(path, _call(f"create {path}", lambda: qe.EdgeShard.create(str(path), config)))

    @classmethod
    def load(cls, path: Path, warm_up: bool = True) -> EdgeCollection:
        try:
            shard = qe.EdgeShard.load(str(path))
        except Exception as exc:
            if _WAL_LOCKED in str(exc):
                raise StoreInUseError(in_use_message(path, "another open handle (Edge's WAL lock)")) from exc
            raise VectorStoreError(f"Qdrant Edge cannot open {path}: {exc}") from exc
        collection = cls(path, shard)
        if warm_up:
            collection.warm_up()
        return collection

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            raise VectorStoreError(f"the vector store {self.path} is closed")
        return self._shard

    # --- shape and indexes -------------------------------------------------------------------

    def vector_params(self) -> VectorParams:
        """Read once from the shard's persisted config (the engine offers no call for it)."""
        if self._params is None:
            self._params = self._read_vector_params()
        return self._params

    def _read_vector_params(self) -> VectorParams:
        config = json.loads((self.path / "edge_config.json").read_text())
        vectors = config.get("vectors") or {}
        if set(vectors) != {""}:
            raise CollectionMismatchError(
                f"the embedded collection at {self.path} uses named vectors {sorted(vectors)}; "
                "face-pipeline needs one unnamed vector"
            )
        return VectorParams(int(vectors[""]["size"]), str(vectors[""]["distance"]).lower())

    def create_keyword_index(self, key: str, is_tenant: bool = False) -> None:
        schema = qe.KeywordIndexParams(is_tenant=True) if is_tenant else qe.PayloadSchemaType.Keyword
        self._write(f"create index {key}", qe.UpdateOperation.create_field_index(key, schema))

    def payload_indexes(self) -> dict[str, tuple[str, bool, int]]:
        """Payload field -> (type, is_tenant, points indexed)."""
        schema = _call("info", lambda: self.shard.info()).payload_schema
        return {
            name: (
                str(info.data_type).rsplit(".", 1)[-1].lower(),
                bool(getattr(info.params, "is_tenant", False)),
                int(info.points),
            )
            for name, info in schema.items()
        }

    def points_count(self) -> int:
        return int(_call("info", lambda: self.shard.info()).points_count)

    def segments_count(self) -> int:
        return int(_call("info", lambda: self.shard.info()).segments_count)

    # --- points ------------------------------------------------------------------------------

    def upsert(
        self,
        ids: Sequence[str | int],
        vectors: np.ndarray | Sequence[Sequence[float]],
        payloads: Sequence[dict],
    ) -> None:
        rows = vectors.tolist() if isinstance(vectors, np.ndarray) else [list(v) for v in vectors]
        points = [qe.Point(pid, row, payload) for pid, row, payload in zip(ids, rows, payloads, strict=True)]
        self._write("upsert", qe.UpdateOperation.upsert_points(points))

    def delete(self, flt: qe.Filter) -> None:
        self._write("delete", qe.UpdateOperation.delete_points_by_filter(flt))

    def delete_ids(self, ids: Sequence[str | int]) -> None:
        self._write("delete", qe.UpdateOperation.delete_points(list(ids)))

    def query(
        self,
        vector: list[float],
        flt: qe.Filter | None,
        limit: int,
        *,
        offset: int = 0,
        score_threshold: float | None = None,
        with_payload: bool = True,
        with_vector: bool = False,
    ) -> list[qe.ScoredPoint]:
        request = qe.QueryRequest(
            limit=limit,
            offset=offset or None,
            query=qe.Query.Nearest(vector),
            filter=flt,
            score_threshold=score_threshold,
            with_payload=with_payload,
            with_vector=with_vector,
            params=_RESCORED,
        )
        return _call("query", lambda: self.shard.query(request))

    def scroll(
        self,
        flt: qe.Filter | None,
        limit: int,
        offset: Any = None,
        *,
        with_payload: bool = True,
        with_vector: bool = False,
    ) -> tuple[list[qe.Record], Any]:
        request = qe.ScrollRequest(
            offset=offset, limit=limit, filter=flt, with_payload=with_payload, with_vector=with_vector
        )
        return _call("scroll", lambda: self.shard.scroll(request))

    def count(self, flt: qe.Filter | None) -> int:
        return int(_call("count", lambda: self.shard.count(qe.CountRequest(exact=True, filter=flt))))

    # --- lifecycle ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """A few searches over every segment, so the first users do not pay for cold pages."""
        dim = self.vector_params().size
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for _ in range(WARMUP_QUERIES):
            self.query(rng.standard_normal(dim).astype(np.float32).tolist(), None, 10, with_payload=False)
        log.info("vector store %s warmed up in %.0f ms", self.path, (time.perf_counter() - started) * 1000)

    def _write(self, what: str, operation: qe.UpdateOperation) -> None:
        with self._write_lock:
            _call(what, lambda: self.shard.update(operation))
            if time.monotonic() - self._last_flush >= FLUSH_INTERVAL_S:
                self._flush_locked()

    def _flush_locked(self) -> None:
        # Durability comes from the WAL; a flush writes segments so the WAL can be truncated.
        _call("flush", lambda: self.shard.flush())
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        with self._write_lock:
            self._flush_locked()

    def optimize(self) -> bool:
        """Merge segments and build what the config asks for. Holds the GIL: never while serving."""
        with self._write_lock:
            return bool(_call("optimize", lambda: self.shard.optimize()))

    def close(self) -> None:
        with self._write_lock:
            if self._shard is None:
                return
            shard, self._shard = self._shard, None
            try:
                _call("flush", shard.flush)
            finally:
                _call("close", shard.close)


class EdgeStore:
    """The embedded store's folder: its lock, its collections, and the migration of an old layout."""

    def __init__(self, root: Path, *, migrate: bool = True) -> None:
        self.root = root
        self._lock = StoreLock(root)
        try:
            if migrate:
                from facepipe.store.vectors.migrate import migrate_if_needed

                migrate_if_needed(self)
        except BaseException:
            self._lock.release()
            raise

    def collection_path(self, name: str) -> Path:
        return self.root / COLLECTIONS_DIR / collection_dir_name(name)

    def names(self) -> list[str]:
        folder = self.root / COLLECTIONS_DIR
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / "edge_config.json").is_file())

    def exists(self, name: str) -> bool:
        return (self.collection_path(name) / "edge_config.json").is_file()

    def open(self, name: str, warm_up: bool = True) -> EdgeCollection | None:
        """The collection, or None when it does not exist."""
        if not self.exists(name):
            return None
        return EdgeCollection.load(self.collection_path(name), warm_up=warm_up)

    def create(self, name: str, dim: int, distance: str = "cosine") -> EdgeCollection:
        path = self.collection_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not self.exists(name):
            shutil.rmtree(path)  # a create that died before writing its config
        return EdgeCollection.create(path, dim, distance)

    def drop(self, name: str) -> None:
        """Remove a collection's folder (closed by the caller first)."""
        shutil.rmtree(self.collection_path(name), ignore_errors=True)

    def close(self) -> None:
        self._lock.release()


def optimize_store(root: Path) -> dict[str, bool]:
    """Optimize every collection of a store nobody serves; per collection, whether anything changed.

    Merges segments and builds the int8 copies of the vectors (seconds per million faces).
    Run it in its own process while the stack is stopped: ``optimize()`` holds the GIL for
    its whole run, so a serving process would stop answering. The store's lock makes sure
    nothing else has it open."""
    store = EdgeStore(root)
    changed: dict[str, bool] = {}
    try:
        for name in store.names():
            collection = store.open(name, warm_up=False)
            assert collection is not None
            started = time.perf_counter()
            try:
                changed[name] = collection.optimize()
            finally:
                collection.close()
            log.info("optimized collection %s of %s in %.1f s", name, root, time.perf_counter() - started)
    finally:
        store.close()
    return changed
