"""The embedded vector index: Qdrant Edge in this process, at ``QDRANT_PATH``.

Opening takes the store folder for this process (a second opener gets StoreInUseError
naming the folder and the holder), migrates a folder written by qdrant-client's local
mode, then opens the index's collection if it exists (and warms it up); the other
collections of the store (views, pack collections) open the same way on first use and
stay open until the index closes. Reads go straight to the engine, which releases the GIL
while it searches. Aliases are the store's recorded pointers (``aliases.json``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import qdrant_edge as qe

from facepipe.core.settings import Settings
from facepipe.store.vectors.base import VectorIndex
from facepipe.store.vectors.edge_engine import EdgeCollection, EdgeStore, plain_vector
from facepipe.store.vectors.filters import PointFilter
from facepipe.store.vectors.points import SearchHit, VectorParams, VectorStoreError


def edge_filter(flt: PointFilter | None) -> qe.Filter | None:
    """The spec as Qdrant Edge's filter: one MatchValue condition per key."""
    if flt is None:
        return None
    return qe.Filter(
        must=[qe.FieldCondition(key=key, match=qe.MatchValue(value)) for key, value in flt.matches]
    )


def _hit(point: qe.ScoredPoint | qe.Record, score: float) -> SearchHit:
    vector = plain_vector(point.vector)
    return SearchHit(
        id=str(point.id),
        score=score,
        payload=dict(point.payload or {}),
        vector=np.asarray(vector, dtype=np.float32) if vector is not None else None,
    )


class _OpenCollections:
    """The store and the collections opened in it, shared by an index and its views."""

    def __init__(self, store: EdgeStore) -> None:
        self.store = store
        self.open: dict[str, EdgeCollection] = {}
        self.lock = threading.Lock()

    def get(self, name: str) -> EdgeCollection | None:
        with self.lock:
            if name not in self.open:
                collection = self.store.open(name)
                if collection is None:
                    return None
                self.open[name] = collection
            return self.open[name]

    def create(self, name: str, dim: int) -> EdgeCollection:
        with self.lock:
            if name not in self.open:
                self.open[name] = self.store.create(name, dim)
            return self.open[name]

    def drop(self, name: str) -> None:
        with self.lock:
            collection = self.open.pop(name, None)
            if collection is not None:
                collection.close()
            self.store.drop(name)

    def close(self) -> None:
        with self.lock:
            try:
                for collection in self.open.values():
                    collection.close()
            finally:
                self.open.clear()
                self.store.close()


class EdgeVectorIndex(VectorIndex):
    embedded = True
    routes_ttl_s = 0.0  # the aliases are this process's own: always current

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._collections = _OpenCollections(EdgeStore(settings.qdrant_path))
        try:
            self._collections.get(self.collection)
        except BaseException:
            self._collections.close()
            raise

    @property
    def store(self) -> EdgeStore:
        return self._collections.store

    def _engine(self, name: str) -> EdgeCollection:
        collection = self._collections.get(name)
        if collection is None:
            raise VectorStoreError(
                f"collection {name!r} does not exist in {self.settings.qdrant_path} yet "
                "(ensure_collection creates it)"
            )
        return collection

    @property
    def engine(self) -> EdgeCollection:
        """This index's own collection (for tools and tests that look at the engine itself)."""
        return self._engine(self.collection)

    def _vector_params(self, name: str) -> VectorParams | None:
        collection = self._collections.get(name)
        return collection.vector_params() if collection is not None else None

    def _create_collection(self, name: str, dim: int) -> None:
        self._collections.create(name, dim)

    def _create_keyword_index(self, name: str, key: str, is_tenant: bool) -> None:
        self._engine(name).create_keyword_index(key, is_tenant=is_tenant)

    def _payload_indexes(self, name: str) -> dict[str, str]:
        indexes = self._engine(name).payload_indexes()
        return {field: kind for field, (kind, _tenant, _points) in indexes.items()}

    def _upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        self._engine(name).upsert(ids, vectors, payloads)

    def _query(
        self, name: str, vector: np.ndarray, flt: PointFilter, limit: int, score_threshold: float | None
    ) -> list[SearchHit]:
        engine = self._engine(name)
        points = engine.query(vector.tolist(), edge_filter(flt), limit, score_threshold=score_threshold)
        return [_hit(point, float(point.score)) for point in points]

    def _scroll_page(
        self, name: str, flt: PointFilter | None, limit: int, offset: Any, with_vectors: bool
    ) -> tuple[list[SearchHit], Any]:
        records, next_offset = self._engine(name).scroll(
            edge_filter(flt), limit, offset, with_vector=with_vectors
        )
        return [_hit(record, 0.0) for record in records], next_offset

    def _count(self, name: str, flt: PointFilter | None) -> int:
        return self._engine(name).count(edge_filter(flt))

    def _delete(self, name: str, flt: PointFilter) -> None:
        filter_ = edge_filter(flt)
        assert filter_ is not None
        self._engine(name).delete(filter_)

    def _existing_ids(self, name: str, ids: list[str]) -> set[str]:
        return {str(pid) for pid in self._engine(name).retrieve_ids(ids)}

    def _collection_names(self) -> list[str]:
        return self.store.names()

    def _read_aliases(self) -> dict[str, str]:
        return self.store.aliases()

    def _write_aliases(self, point: dict[str, str], remove: list[str]) -> None:
        self.store.update_aliases(point, remove)

    def _drop_collection(self, name: str) -> None:
        self._collections.drop(name)

    def _close(self) -> None:
        self._collections.close()
