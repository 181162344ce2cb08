"""The vector index on a Qdrant server (``QDRANT_URL``), through qdrant-client.

Any qdrant-client may be passed in instead: the contract tests run this backend against
qdrant-client's local mode (``QdrantClient(path=...)``), which speaks the same client API
as a server but keeps no payload indexes (it accepts them and reports none).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from facepipe.core.errors import TransientError, is_transient
from facepipe.core.settings import Settings
from facepipe.store.vectors.base import (
    REMOTE_TIMEOUT_S,
    CollectionMismatchError,
    SearchHit,
    VectorIndex,
    VectorParams,
)
from facepipe.store.vectors.filters import PointFilter

T = TypeVar("T")


def client_filter(flt: PointFilter | None) -> qm.Filter | None:
    """The spec as qdrant-client's filter: one MatchValue condition per key."""
    if flt is None:
        return None
    return qm.Filter(
        must=[qm.FieldCondition(key=key, match=qm.MatchValue(value=value)) for key, value in flt.matches]
    )


def _hit(point: qm.ScoredPoint | qm.Record, score: float) -> SearchHit:
    vector = point.vector
    return SearchHit(
        id=str(point.id),
        score=score,
        payload=dict(point.payload or {}),
        vector=np.asarray(vector, dtype=np.float32) if isinstance(vector, list) else None,
    )


class ServerVectorIndex(VectorIndex):
    embedded = False

    def __init__(self, settings: Settings, client: QdrantClient | None = None) -> None:
        super().__init__(settings)
        self.client = client or QdrantClient(
            url=settings.qdrant_url,
            api_key=settings.qdrant_api_key or None,
            timeout=REMOTE_TIMEOUT_S,
            check_compatibility=False,
        )
        # qdrant-client's local mode keeps its state in Python objects and SQLite and is not
        # thread-safe; a server is, so only a passed-in (local) client is serialised.
        self._lock = threading.RLock() if client is not None else None

    def _run(self, fn: Callable[[], T]) -> T:
        """One client call; a server that is unreachable or failing (5xx, timeouts) raises
        TransientError naming the vector store (the ops-api answers 503 with it)."""
        try:
            if self._lock is None:
                return fn()
            with self._lock:
                return fn()
        except Exception as exc:
            if is_transient(exc) and not isinstance(exc, TransientError):
                raise TransientError(f"vector store ({self.settings.qdrant_url}) unavailable: {exc}") from exc
            raise

    def _vector_params(self) -> VectorParams | None:
        if not self._run(lambda: self.client.collection_exists(self.collection)):
            return None
        params = self._run(lambda: self.client.get_collection(self.collection)).config.params.vectors
        if not isinstance(params, qm.VectorParams):
            raise CollectionMismatchError(
                f"collection {self.collection!r} uses named vectors {sorted(params or {})}; "
                "face-pipeline needs one unnamed cosine vector: set QDRANT_COLLECTION to another name"
            )
        return VectorParams(params.size, params.distance.value.lower())

    def _create_collection(self, dim: int) -> None:
        self._run(
            lambda: self.client.create_collection(
                self.collection, vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
            )
        )

    def _create_keyword_index(self, key: str, is_tenant: bool) -> None:
        schema = qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=is_tenant or None)
        with warnings.catch_warnings():
            # Local mode accepts payload indexes but warns that they do nothing there.
            warnings.simplefilter("ignore", UserWarning)
            self._run(
                lambda: self.client.create_payload_index(self.collection, key, field_schema=schema, wait=True)
            )

    def payload_indexes(self) -> dict[str, str]:
        schema = self._run(lambda: self.client.get_collection(self.collection)).payload_schema or {}
        return {name: str(getattr(info.data_type, "value", info.data_type)) for name, info in schema.items()}

    def healthy(self) -> bool:
        try:
            return bool(self._run(lambda: self.client.collection_exists(self.collection)))
        except Exception:
            return False

    def _upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        structs = [
            qm.PointStruct(id=pid, vector=vector, payload=payload)
            for pid, vector, payload in zip(ids, vectors.tolist(), payloads, strict=True)
        ]
        self._run(lambda: self.client.upsert(self.collection, points=structs, wait=True))

    def _query(
        self, vector: np.ndarray, flt: PointFilter, limit: int, score_threshold: float | None
    ) -> list[SearchHit]:
        response = self._run(
            lambda: self.client.query_points(
                self.collection,
                query=vector.tolist(),
                query_filter=client_filter(flt),
                limit=limit,
                score_threshold=score_threshold,
                with_payload=True,
            )
        )
        return [_hit(point, float(point.score)) for point in response.points]

    def _scroll_page(
        self, flt: PointFilter, limit: int, offset: Any, with_vectors: bool
    ) -> tuple[list[SearchHit], Any]:
        records, next_offset = self._run(
            lambda: self.client.scroll(
                self.collection,
                scroll_filter=client_filter(flt),
                limit=limit,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
        )
        return [_hit(record, 0.0) for record in records], next_offset

    def _count(self, flt: PointFilter | None) -> int:
        return int(
            self._run(
                lambda: self.client.count(self.collection, count_filter=client_filter(flt), exact=True)
            ).count
        )

    def _delete(self, flt: PointFilter) -> None:
        selector = qm.FilterSelector(filter=client_filter(flt))
        self._run(lambda: self.client.delete(self.collection, points_selector=selector, wait=True))

    def close(self) -> None:
        self._run(self.client.close)
