"""The embedded vector index: Qdrant Edge in this process, at ``QDRANT_PATH``.

Opening takes the store folder for this process (a second opener gets StoreInUseError
naming the folder and the holder), migrates a folder written by qdrant-client's local
mode, then opens the collection if it exists (and warms it up); ``ensure_collection``
creates it. Reads go straight to the engine, which releases the GIL while it searches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import qdrant_edge as qe

from facepipe.core.settings import Settings
from facepipe.store.vectors.base import SearchHit, VectorIndex, VectorParams, VectorStoreError
from facepipe.store.vectors.edge_engine import EdgeCollection, EdgeStore, plain_vector
from facepipe.store.vectors.filters import PointFilter


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


class EdgeVectorIndex(VectorIndex):
    embedded = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.store = EdgeStore(settings.qdrant_path)
        try:
            self._collection: EdgeCollection | None = self.store.open(self.collection)
        except BaseException:
            self.store.close()
            raise

    @property
    def engine(self) -> EdgeCollection:
        if self._collection is None:
            raise VectorStoreError(
                f"collection {self.collection!r} does not exist in {self.settings.qdrant_path} yet "
                "(ensure_collection creates it)"
            )
        return self._collection

    def _vector_params(self) -> VectorParams | None:
        return self._collection.vector_params() if self._collection is not None else None

    def _create_collection(self, dim: int) -> None:
        self._collection = self.store.create(self.collection, dim)

    def _create_keyword_index(self, key: str, is_tenant: bool) -> None:
        self.engine.create_keyword_index(key, is_tenant=is_tenant)

    def payload_indexes(self) -> dict[str, str]:
        return {name: kind for name, (kind, _tenant, _points) in self.engine.payload_indexes().items()}

    def healthy(self) -> bool:
        try:
            return self._collection is not None and self._collection.points_count() >= 0
        except Exception:
            return False

    def _upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        self.engine.upsert(ids, vectors, payloads)

    def _query(
        self, vector: np.ndarray, flt: PointFilter, limit: int, score_threshold: float | None
    ) -> list[SearchHit]:
        points = self.engine.query(vector.tolist(), edge_filter(flt), limit, score_threshold=score_threshold)
        return [_hit(point, float(point.score)) for point in points]

    def _scroll_page(
        self, flt: PointFilter, limit: int, offset: Any, with_vectors: bool
    ) -> tuple[list[SearchHit], Any]:
        records, next_offset = self.engine.scroll(edge_filter(flt), limit, offset, with_vector=with_vectors)
        return [_hit(record, 0.0) for record in records], next_offset

    def _count(self, flt: PointFilter | None) -> int:
        return self.engine.count(edge_filter(flt))

    def _delete(self, flt: PointFilter) -> None:
        filter_ = edge_filter(flt)
        assert filter_ is not None
        self.engine.delete(filter_)

    def close(self) -> None:
        try:
            if self._collection is not None:
                self._collection.close()
        finally:
            self.store.close()
