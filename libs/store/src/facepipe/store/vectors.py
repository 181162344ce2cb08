"""The face vector index (Qdrant through qdrant-client).

``QDRANT_URL`` unset or ``embedded``: qdrant-client's local mode on ``QDRANT_PATH`` (one process
may open a path at a time; a second one gets a RuntimeError naming the folder). Otherwise a
Qdrant server at ``QDRANT_URL`` with ``QDRANT_API_KEY``.

Every read is filtered by tenant: :meth:`VectorIndex.search` has no way to search across
tenants. Point ids are UUIDv5 of (tenant, image_sha256, face_index), so re-indexing a face
overwrites its point instead of adding one.
"""

from __future__ import annotations

import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from facepipe.core.errors import TransientError, is_transient
from facepipe.core.settings import Settings
from facepipe.core.tenancy import validate_tenant_id

T = TypeVar("T")

# Fixed forever: changing it would give every face a new point id.
POINT_NAMESPACE = uuid.UUID("6f1c6d1e-4f7a-5b52-9a51-3c0de7a1f0c3")

KEYWORD_INDEXES = ("tenant_id", "site", "phash_prefix", "image_sha256")
REMOTE_TIMEOUT_S = 10


class CollectionMismatchError(RuntimeError):
    """The collection exists with another vector size or distance than the model pack needs."""


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


@dataclass(frozen=True)
class SearchHit:
    id: str
    score: float
    payload: dict[str, Any]


def _tenant_filter(tenant_id: str, **must_match: str | None) -> qm.Filter:
    tenant = validate_tenant_id(tenant_id)
    conditions: list[qm.Condition] = [qm.FieldCondition(key="tenant_id", match=qm.MatchValue(value=tenant))]
    for key, value in must_match.items():
        if value is not None:
            conditions.append(qm.FieldCondition(key=key, match=qm.MatchValue(value=value)))
    return qm.Filter(must=conditions)


class VectorIndex:
    """One collection of face vectors, every operation scoped by tenant."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.collection = settings.qdrant_collection
        self.embedded = settings.qdrant_embedded
        if self.embedded:
            settings.qdrant_path.mkdir(parents=True, exist_ok=True)
            # Local mode keeps its state in Python objects and SQLite; the handlers may call from
            # worker threads, so calls are serialised here instead of by SQLite's thread check.
            self.client = QdrantClient(path=str(settings.qdrant_path), force_disable_check_same_thread=True)
        else:
            self.client = QdrantClient(
                url=settings.qdrant_url,
                api_key=settings.qdrant_api_key or None,
                timeout=REMOTE_TIMEOUT_S,
                check_compatibility=False,
            )
        self._lock = threading.RLock() if self.embedded else None

    def _run(self, fn: Callable[[], T]) -> T:
        """One client call; a server that is unreachable or failing (5xx, timeouts) raises
        TransientError, which names the vector store (the ops-api answers 503 with it)."""
        try:
            if self._lock is None:
                return fn()
            with self._lock:
                return fn()
        except Exception as exc:
            if is_transient(exc) and not isinstance(exc, TransientError):
                where = "embedded" if self.embedded else self.settings.qdrant_url
                raise TransientError(f"vector store ({where}) unavailable: {exc}") from exc
            raise

    # --- collection ----------------------------------------------------------------------

    def ensure_collection(self, dim: int) -> bool:
        """Create the collection (cosine, ``dim``) and its keyword indexes; True if it was created.

        An existing collection with another size or distance raises CollectionMismatchError:
        silently writing 128-d vectors into a 512-d collection (or the other way) cannot work.
        """
        if dim <= 0:
            raise ValueError(f"vector size must be positive, got {dim}")
        created = False
        if not self._run(lambda: self.client.collection_exists(self.collection)):
            try:
                self._run(
                    lambda: self.client.create_collection(
                        self.collection, vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.COSINE)
                    )
                )
                created = True
            except Exception:
                # Another replica may have created it a moment ago; anything else re-raises below.
                if not self._run(lambda: self.client.collection_exists(self.collection)):
                    raise
        self._check_vectors(dim)
        with warnings.catch_warnings():
            # Local mode accepts payload indexes but warns that they do nothing there.
            warnings.simplefilter("ignore", UserWarning)
            existing = self.payload_indexes()
            for name in KEYWORD_INDEXES:
                if name not in existing:
                    self._run(
                        lambda n=name: self.client.create_payload_index(
                            self.collection, n, field_schema=qm.PayloadSchemaType.KEYWORD, wait=True
                        )
                    )
        return created

    def _check_vectors(self, dim: int) -> None:
        params = self._run(lambda: self.client.get_collection(self.collection)).config.params.vectors
        if not isinstance(params, qm.VectorParams):
            raise CollectionMismatchError(
                f"collection {self.collection!r} uses named vectors {sorted(params or {})}; "
                "face-pipeline needs one unnamed cosine vector: set QDRANT_COLLECTION to another name"
            )
        if params.size != dim or params.distance != qm.Distance.COSINE:
            raise CollectionMismatchError(
                f"collection {self.collection!r} holds {params.size}-d {params.distance.value} vectors "
                f"but the model pack produces {dim}-d cosine vectors: set QDRANT_COLLECTION to a new name "
                "(e.g. faces_<pack>) or re-index into a fresh collection"
            )

    def vector_size(self) -> int | None:
        """The collection's vector size, or None when the collection does not exist."""
        if not self._run(lambda: self.client.collection_exists(self.collection)):
            return None
        params = self._run(lambda: self.client.get_collection(self.collection)).config.params.vectors
        return params.size if isinstance(params, qm.VectorParams) else None

    def payload_indexes(self) -> dict[str, str]:
        schema = self._run(lambda: self.client.get_collection(self.collection)).payload_schema or {}
        return {name: str(getattr(info.data_type, "value", info.data_type)) for name, info in schema.items()}

    def healthy(self) -> bool:
        """True when the server (or the local folder) answers and the collection exists."""
        try:
            return bool(self._run(lambda: self.client.collection_exists(self.collection)))
        except Exception:
            return False

    # --- points --------------------------------------------------------------------------

    def upsert(self, points: Sequence[FacePoint]) -> int:
        """Write a batch of faces in one call (overwrites points with the same ids)."""
        if not points:
            return 0
        structs = []
        for point in points:
            payload = {
                **point.payload,
                "tenant_id": validate_tenant_id(point.tenant_id),
                "image_sha256": point.image_sha256,
                "face_index": int(point.face_index),
            }
            vector = np.asarray(point.vector, dtype=np.float32).tolist()
            structs.append(qm.PointStruct(id=point.id, vector=vector, payload=payload))
        self._run(lambda: self.client.upsert(self.collection, points=structs, wait=True))
        return len(structs)

    def search(
        self, tenant_id: str, vector: Sequence[float] | np.ndarray, top_k: int = 10, site: str | None = None
    ) -> list[SearchHit]:
        """Nearest faces of one tenant (cosine similarity, best first)."""
        query = np.asarray(vector, dtype=np.float32).tolist()
        response = self._run(
            lambda: self.client.query_points(
                self.collection,
                query=query,
                query_filter=_tenant_filter(tenant_id, site=site),
                limit=max(1, int(top_k)),
                with_payload=True,
            )
        )
        return [
            SearchHit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {}))
            for p in response.points
        ]

    def scroll(
        self, tenant_id: str, image_sha256: str | None = None, batch: int = 256
    ) -> Iterator[SearchHit]:
        """Every point of a tenant (or of one image of a tenant), payloads only."""
        flt = _tenant_filter(tenant_id, image_sha256=image_sha256)
        offset: Any = None
        while True:
            records, offset = self._run(
                lambda o=offset: self.client.scroll(
                    self.collection,
                    scroll_filter=flt,
                    limit=batch,
                    offset=o,
                    with_payload=True,
                    with_vectors=False,
                )
            )
            for record in records:
                yield SearchHit(id=str(record.id), score=0.0, payload=dict(record.payload or {}))
            if offset is None:
                return

    def _delete(self, flt: qm.Filter) -> int:
        count = self._run(lambda: self.client.count(self.collection, count_filter=flt, exact=True)).count
        if count:
            self._run(
                lambda: self.client.delete(
                    self.collection, points_selector=qm.FilterSelector(filter=flt), wait=True
                )
            )
        return int(count)

    def delete_image(self, tenant_id: str, image_sha256: str) -> int:
        """Remove every face of one image of one tenant; returns how many points there were."""
        return self._delete(_tenant_filter(tenant_id, image_sha256=image_sha256))

    def delete_tenant(self, tenant_id: str) -> int:
        return self._delete(_tenant_filter(tenant_id))

    def count(self, tenant_id: str | None = None) -> int:
        if not self._run(lambda: self.client.collection_exists(self.collection)):
            return 0
        flt = _tenant_filter(tenant_id) if tenant_id is not None else None
        return int(self._run(lambda: self.client.count(self.collection, count_filter=flt, exact=True)).count)

    def close(self) -> None:
        self._run(self.client.close)
