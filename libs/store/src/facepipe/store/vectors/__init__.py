"""The face vector index: one interface, two backends.

``VectorIndex(settings)`` opens

- ``QDRANT_URL`` empty or ``embedded``: Qdrant Edge, Qdrant's engine in this process, at
  ``QDRANT_PATH`` (:mod:`.edge`, :mod:`.edge_engine`). One process may open a folder at a
  time; a second gets :class:`StoreInUseError` naming the folder and the holder. A folder
  written by qdrant-client's local mode (the embedded store before) is migrated on open
  (:mod:`.migrate`).
- otherwise a Qdrant server at ``QDRANT_URL`` with ``QDRANT_API_KEY``, through qdrant-client
  (:mod:`.server`).

Every read is filtered by tenant through a payload index: :meth:`VectorIndex.search` has
no way to search across tenants. Point ids are UUIDv5 of (tenant, image_sha256,
face_index), so re-indexing a face overwrites its point instead of adding one. Filters
are one project-level spec (:class:`PointFilter`) that each backend translates.
"""

from facepipe.store.vectors.base import (
    POINT_NAMESPACE,
    REMOTE_TIMEOUT_S,
    CollectionMismatchError,
    FacePoint,
    SearchHit,
    VectorIndex,
    VectorStoreError,
    point_id,
)
from facepipe.store.vectors.filters import KEYWORD_INDEXES, PointFilter, UnsupportedFilterError
from facepipe.store.vectors.lock import StoreInUseError

__all__ = [
    "KEYWORD_INDEXES",
    "POINT_NAMESPACE",
    "REMOTE_TIMEOUT_S",
    "CollectionMismatchError",
    "FacePoint",
    "PointFilter",
    "SearchHit",
    "StoreInUseError",
    "UnsupportedFilterError",
    "VectorIndex",
    "VectorStoreError",
    "point_id",
]
