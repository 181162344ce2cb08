"""The vector index interface every backend implements, and what it is made of.

:class:`VectorIndex` holds the pipeline's rules (tenant-scoped reads, UUIDv5 point ids,
payload fields, keyword indexes, the vector size check); a backend only supplies the
primitive calls on its engine (the ``_``-prefixed abstract methods), each taking the
project-level :class:`PointFilter`. ``VectorIndex(settings)`` opens the backend the
settings name (``pathlib.Path`` style): the embedded store (Qdrant Edge) when
``QDRANT_URL`` is empty or ``embedded``, else a Qdrant server through qdrant-client.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facepipe.core.settings import Settings
from facepipe.core.tenancy import validate_tenant_id
from facepipe.store.vectors.filters import KEYWORD_INDEXES, TENANT_KEY, PointFilter

# Fixed forever: changing it would give every face a new point id.
POINT_NAMESPACE = uuid.UUID("6f1c6d1e-4f7a-5b52-9a51-3c0de7a1f0c3")
DISTANCE = "cosine"
REMOTE_TIMEOUT_S = 10  # seconds a call to a Qdrant server may take


class CollectionMismatchError(RuntimeError):
    """The collection exists with another vector size or distance than the model pack needs."""


class VectorStoreError(RuntimeError):
    """The embedded engine refused an operation (its message says why)."""


def point_id(tenant_id: str, image_sha256: str, face_index: int) -> str:
    """Deterministic point id of one face: the same face always maps to the same point."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{tenant_id}\x1f{image_sha256}\x1f{int(face_index)}"))


@dataclass(frozen=True)
class FacePoint:
    """One face to index. ``payload`` gets tenant_id, image_sha256 and face_index set from the fields."""

    tenant_id: str
    image_sha256: str
    face_index: int
    vector: Sequence[float] | np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return point_id(self.tenant_id, self.image_sha256, self.face_index)

    def full_payload(self) -> dict[str, Any]:
        return {
            **self.payload,
            TENANT_KEY: validate_tenant_id(self.tenant_id),
            "image_sha256": self.image_sha256,
            "face_index": int(self.face_index),
        }


@dataclass(frozen=True)
class SearchHit:
    """A stored face: its point id, similarity (0.0 from scroll), payload, and vector if asked for."""

    id: str
    score: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class VectorParams:
    size: int
    distance: str  # lower case: "cosine", "dot", "euclid", "manhattan"


class VectorIndex(ABC):
    """One collection of face vectors, every read scoped by tenant."""

    embedded: bool

    def __new__(cls, settings: Settings, *args: Any, **kwargs: Any) -> VectorIndex:
        if cls is VectorIndex:
            if settings.qdrant_embedded:
                from facepipe.store.vectors.edge import EdgeVectorIndex

                cls = EdgeVectorIndex
            else:
                from facepipe.store.vectors.server import ServerVectorIndex

                cls = ServerVectorIndex
        return super().__new__(cls)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.collection = settings.qdrant_collection

    # --- what a backend provides ---------------------------------------------------------

    @abstractmethod
    def _vector_params(self) -> VectorParams | None:
        """The collection's single unnamed vector, None when there is no collection.

        Raises CollectionMismatchError when the collection is not of that shape at all."""

    @abstractmethod
    def _create_collection(self, dim: int) -> None: ...

    @abstractmethod
    def _create_keyword_index(self, key: str, is_tenant: bool) -> None: ...

    @abstractmethod
    def payload_indexes(self) -> dict[str, str]:
        """Payload field -> index type (``keyword``...), for the indexes the store really keeps."""

    @abstractmethod
    def _upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        """Write (or overwrite) points; durable when this returns."""

    @abstractmethod
    def _query(
        self, vector: np.ndarray, flt: PointFilter, limit: int, score_threshold: float | None
    ) -> list[SearchHit]: ...

    @abstractmethod
    def _scroll_page(
        self, flt: PointFilter, limit: int, offset: Any, with_vectors: bool
    ) -> tuple[list[SearchHit], Any]:
        """One page in point id order and the offset of the next one (None after the last)."""

    @abstractmethod
    def _count(self, flt: PointFilter | None) -> int: ...

    @abstractmethod
    def _delete(self, flt: PointFilter) -> None: ...

    @abstractmethod
    def healthy(self) -> bool:
        """True when the store answers and the collection exists."""

    @abstractmethod
    def close(self) -> None: ...

    # --- collection ----------------------------------------------------------------------

    def ensure_collection(self, dim: int) -> bool:
        """Create the collection (cosine, ``dim``) and its keyword indexes; True if it was created.

        An existing collection with another size or distance raises CollectionMismatchError:
        silently writing 128-d vectors into a 512-d collection (or the other way) cannot work.
        """
        if dim <= 0:
            raise ValueError(f"vector size must be positive, got {dim}")
        created = False
        if self._vector_params() is None:
            try:
                self._create_collection(dim)
                created = True
            except Exception:
                # Another replica may have created it a moment ago; anything else re-raises below.
                if self._vector_params() is None:
                    raise
        self._check_vectors(dim)
        existing = self.payload_indexes()
        for key in KEYWORD_INDEXES:
            if key not in existing:
                self._create_keyword_index(key, is_tenant=key == TENANT_KEY)
        return created

    def _check_vectors(self, dim: int) -> None:
        params = self._vector_params()
        assert params is not None
        if params.size != dim or params.distance != DISTANCE:
            raise CollectionMismatchError(
                f"collection {self.collection!r} holds {params.size}-d {params.distance} vectors "
                f"but the model pack produces {dim}-d {DISTANCE} vectors: set QDRANT_COLLECTION to a new "
                "name (e.g. faces_<pack>) or re-index into a fresh collection"
            )

    def vector_size(self) -> int | None:
        """The collection's vector size, or None when the collection does not exist."""
        params = self._vector_params()
        return params.size if params is not None else None

    # --- points --------------------------------------------------------------------------

    def upsert(self, points: Sequence[FacePoint]) -> int:
        """Write a batch of faces in one call (overwrites points with the same ids)."""
        if not points:
            return 0
        payloads = [point.full_payload() for point in points]
        vectors = np.asarray([np.asarray(point.vector, dtype=np.float32) for point in points])
        if vectors.ndim != 2 or not np.all(np.isfinite(vectors)):
            raise ValueError("every vector must be a finite float vector of the same size")
        self._upsert([point.id for point in points], vectors, payloads)
        return len(points)

    def search(
        self,
        tenant_id: str,
        vector: Sequence[float] | np.ndarray,
        top_k: int = 10,
        site: str | None = None,
        score_threshold: float | None = None,
    ) -> list[SearchHit]:
        """Nearest faces of one tenant (cosine similarity, best first, none below ``score_threshold``)."""
        flt = PointFilter.of_tenant(tenant_id, site=site)
        query = np.asarray(vector, dtype=np.float32)
        return self._query(query, flt, max(1, int(top_k)), score_threshold)

    def scroll(
        self, tenant_id: str, image_sha256: str | None = None, batch: int = 256, with_vectors: bool = False
    ) -> Iterator[SearchHit]:
        """Every point of a tenant (or of one image of a tenant), in point id order.

        Payloads always; vectors when ``with_vectors`` (a model-migration backfill reads them)."""
        flt = PointFilter.of_tenant(tenant_id, image_sha256=image_sha256)
        offset: Any = None
        while True:
            hits, offset = self._scroll_page(flt, batch, offset, with_vectors)
            yield from hits
            if offset is None:
                return

    def _delete_counted(self, flt: PointFilter) -> int:
        count = self._count(flt)
        if count:
            self._delete(flt)
        return count

    def delete_image(self, tenant_id: str, image_sha256: str) -> int:
        """Remove every face of one image of one tenant; returns how many points there were."""
        return self._delete_counted(PointFilter.of_tenant(tenant_id, image_sha256=image_sha256))

    def delete_tenant(self, tenant_id: str) -> int:
        return self._delete_counted(PointFilter.of_tenant(tenant_id))

    def count(self, tenant_id: str | None = None) -> int:
        """Points of one tenant (or of every tenant); 0 before the collection exists."""
        if self._vector_params() is None:
            return 0
        return self._count(PointFilter.of_tenant(tenant_id) if tenant_id is not None else None)
