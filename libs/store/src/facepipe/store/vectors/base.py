"""The vector index interface every backend implements, and what it is made of.

:class:`VectorIndex` holds the pipeline's rules (tenant-scoped reads, UUIDv5 point ids,
payload fields, keyword indexes, the vector size check, the collection family and its
tenant aliases); a backend only supplies the primitive calls on its engine (the
``_``-prefixed abstract methods), each naming the collection and taking the project-level
:class:`PointFilter`. ``VectorIndex(settings)`` opens the backend the settings name
(``pathlib.Path`` style): the embedded store (Qdrant Edge) when ``QDRANT_URL`` is empty or
``embedded``, else a Qdrant server through qdrant-client.

``VectorIndex(settings)`` is the *family* ``QDRANT_COLLECTION`` (:mod:`.naming`): a
tenant-scoped call (search, scroll, count, upsert) goes to the collection the tenant's
alias names, or to the base collection for a tenant without one; deleting a face or a
tenant removes it from every collection of the family. :meth:`VectorIndex.view` is one
collection by name, on the same connection, with no routing: what the indexer writes a
pack's vectors through and what a model-pack backfill reads and writes.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facepipe.core.packs import PACKS, ModelPack, get_pack
from facepipe.core.settings import Settings
from facepipe.core.tenancy import validate_tenant_id
from facepipe.store.vectors.filters import KEYWORD_INDEXES, TENANT_KEY, PointFilter
from facepipe.store.vectors.naming import family, pack_collection, pack_of_name, tenant_alias
from facepipe.store.vectors.points import (
    CollectionMismatchError,
    FacePoint,
    Route,
    SearchHit,
    VectorParams,
    VectorStoreError,
)

DISTANCE = "cosine"
REMOTE_TIMEOUT_S = 10  # seconds a call to a Qdrant server may take
# How long a process trusts the aliases it read from a Qdrant server. A switch reaches every
# process within this long; a backfill waits longer than that before its last catch-up.
ROUTES_TTL_S = 2.0


@dataclass
class _Shared:
    """What an index and its views share: the alias cache and the packs of legacy collections."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    aliases: dict[str, str] | None = None
    aliases_read_at: float = 0.0
    packs: dict[str, ModelPack] = field(default_factory=dict)


class VectorIndex(ABC):
    """A family of face vector collections (a :meth:`view`: one of them), every read scoped by tenant."""

    embedded: bool
    # How long aliases read from the store are trusted (the embedded store keeps them in memory).
    routes_ttl_s: float = ROUTES_TTL_S

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
        self.base = settings.qdrant_collection
        self.collection = settings.qdrant_collection
        self._routed = True  # tenant calls follow the tenant's alias (False on a view)
        self._owner = True  # close() releases the connection (False on a view)
        self._shared = _Shared()

    # --- what a backend provides ---------------------------------------------------------

    @abstractmethod
    def _vector_params(self, name: str) -> VectorParams | None:
        """The collection's single unnamed vector, None when there is no collection.

        Raises CollectionMismatchError when the collection is not of that shape at all."""

    @abstractmethod
    def _create_collection(self, name: str, dim: int) -> None: ...

    @abstractmethod
    def _create_keyword_index(self, name: str, key: str, is_tenant: bool) -> None: ...

    @abstractmethod
    def _payload_indexes(self, name: str) -> dict[str, str]:
        """Payload field -> index type (``keyword``...), for the indexes the store really keeps."""

    @abstractmethod
    def _upsert(self, name: str, ids: list[str], vectors: np.ndarray, payloads: list[dict[str, Any]]) -> None:
        """Write (or overwrite) points; durable when this returns."""

    @abstractmethod
    def _query(
        self, name: str, vector: np.ndarray, flt: PointFilter, limit: int, score_threshold: float | None
    ) -> list[SearchHit]: ...

    @abstractmethod
    def _scroll_page(
        self, name: str, flt: PointFilter | None, limit: int, offset: Any, with_vectors: bool
    ) -> tuple[list[SearchHit], Any]:
        """One page in point id order and the offset of the next one (None after the last)."""

    @abstractmethod
    def _count(self, name: str, flt: PointFilter | None) -> int: ...

    @abstractmethod
    def _delete(self, name: str, flt: PointFilter) -> None: ...

    @abstractmethod
    def _existing_ids(self, name: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` the collection holds."""

    @abstractmethod
    def _collection_names(self) -> list[str]: ...

    @abstractmethod
    def _read_aliases(self) -> dict[str, str]:
        """Every alias of the store -> the collection it names."""

    @abstractmethod
    def _write_aliases(self, point: dict[str, str], remove: list[str]) -> None:
        """Remove the aliases ``remove`` and point ``point``'s at their collections, in one atomic step."""

    @abstractmethod
    def _drop_collection(self, name: str) -> None: ...

    @abstractmethod
    def _close(self) -> None: ...

    # --- one collection, or a view of another --------------------------------------------

    def view(self, name: str) -> VectorIndex:
        """Collection ``name`` of the same store, on this connection, without tenant routing.

        Closing a view does nothing; the index it came from owns the connection."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.collection = name
        other._routed = False
        other._owner = False
        return other

    def close(self) -> None:
        if self._owner:
            self._close()

    def healthy(self) -> bool:
        """True when the store answers and the collection exists."""
        try:
            name = self.collection
            return self._vector_params(name) is not None and self._count(name, None) >= 0
        except Exception:
            return False

    def ensure_collection(self, dim: int) -> bool:
        """Create the collection (cosine, ``dim``) and its keyword indexes; True if it was created.

        An existing collection with another size or distance raises CollectionMismatchError:
        silently writing 128-d vectors into a 512-d collection (or the other way) cannot work.
        """
        if dim <= 0:
            raise ValueError(f"vector size must be positive, got {dim}")
        name = self.collection
        created = False
        if self._vector_params(name) is None:
            try:
                self._create_collection(name, dim)
                created = True
            except Exception:
                # Another replica may have created it a moment ago; anything else re-raises below.
                if self._vector_params(name) is None:
                    raise
        self._check_vectors(dim)
        existing = self._payload_indexes(name)
        for key in KEYWORD_INDEXES:
            if key not in existing:
                self._create_keyword_index(name, key, is_tenant=key == TENANT_KEY)
        return created

    def _check_vectors(self, dim: int) -> None:
        params = self._vector_params(self.collection)
        assert params is not None
        if params.size != dim or params.distance != DISTANCE:
            raise CollectionMismatchError(
                f"collection {self.collection!r} holds {params.size}-d {params.distance} vectors "
                f"but the model pack produces {dim}-d {DISTANCE} vectors: set QDRANT_COLLECTION to a new "
                "name (e.g. faces_<pack>) or re-index into a fresh collection"
            )

    def vector_size(self) -> int | None:
        """The collection's vector size, or None when the collection does not exist."""
        params = self._vector_params(self.collection)
        return params.size if params is not None else None

    def payload_indexes(self) -> dict[str, str]:
        """Payload field -> index type (``keyword``...), for the indexes the store really keeps."""
        return self._payload_indexes(self.collection)

    # --- the family: pack collections and tenant aliases ---------------------------------

    def pack_collection(self, pack: ModelPack) -> str:
        return pack_collection(self.base, pack)

    def ensure_pack_collection(self, pack: ModelPack) -> str:
        """Create the collection of ``pack``'s vectors when missing; its name."""
        name = self.pack_collection(pack)
        self.view(name).ensure_collection(pack.dim)
        return name

    def family_collections(self) -> list[str]:
        """The base collection (when it exists) and every pack collection of the family."""
        return family(self.base, self._collection_names())

    def aliases(self) -> dict[str, str]:
        """Every alias of the store -> its collection (read again after ``routes_ttl_s``)."""
        with self._shared.lock:
            fresh = time.monotonic() - self._shared.aliases_read_at < self.routes_ttl_s
            if self._shared.aliases is not None and fresh:
                return dict(self._shared.aliases)
        aliases = self._read_aliases()
        with self._shared.lock:
            self._shared.aliases, self._shared.aliases_read_at = aliases, time.monotonic()
        return dict(aliases)

    def _forget_aliases(self) -> None:
        with self._shared.lock:
            self._shared.aliases = None

    def pack_of(self, name: str) -> ModelPack | None:
        """The pack of a collection's vectors: from its name, else (the base collection) from a point."""
        pack = pack_of_name(self.base, name)
        if pack is not None:
            return pack
        with self._shared.lock:
            if name in self._shared.packs:
                return self._shared.packs[name]
        if self._vector_params(name) is None:
            return None
        hits, _ = self._scroll_page(name, None, 1, None, False)
        label = hits[0].payload.get("model_pack") if hits else None
        if not isinstance(label, str) or label not in PACKS:
            return None
        pack = get_pack(label)
        with self._shared.lock:
            self._shared.packs[name] = pack  # a collection never changes pack
        return pack

    def route(self, tenant_id: str) -> Route:
        """The collection the tenant's searches use now, and the pack of its vectors."""
        tenant = validate_tenant_id(tenant_id)
        target = self.aliases().get(tenant_alias(self.base, tenant))
        if target is not None:
            return Route(tenant, target, self.pack_of(target), pinned=True)
        return Route(tenant, self.base, self.pack_of(self.base), pinned=False)

    def set_route(self, tenant_id: str, collection: str) -> None:
        """Point the tenant's alias at ``collection`` (an existing one): one atomic switch."""
        tenant = validate_tenant_id(tenant_id)
        if self._vector_params(collection) is None:
            raise VectorStoreError(f"cannot route tenant {tenant!r} to {collection!r}: no such collection")
        alias = tenant_alias(self.base, tenant)
        self._write_aliases({alias: collection}, [alias])
        self._forget_aliases()

    def pin_route(self, tenant_id: str, pack: ModelPack) -> Route:
        """Record where an un-aliased tenant's searches go, so a later pack change leaves them there.

        A tenant with faces in the base collection stays on it; any other starts on ``pack``'s
        collection (created when missing). A pinned tenant is returned as it is."""
        route = self.route(tenant_id)
        if route.pinned:
            return route
        has_faces = (
            self._vector_params(self.base) is not None
            and self._count(self.base, PointFilter.of_tenant(route.tenant)) > 0
        )
        collection = self.base if has_faces else self.ensure_pack_collection(pack)
        self.set_route(route.tenant, collection)
        return self.route(route.tenant)

    def forget_route(self, tenant_id: str) -> None:
        """Remove the tenant's alias (its faces are gone: a purge)."""
        alias = tenant_alias(self.base, validate_tenant_id(tenant_id))
        if alias in self.aliases():
            self._write_aliases({}, [alias])
            self._forget_aliases()

    def drop_collection(self, name: str) -> bool:
        """Remove a collection no alias names; False when one does (or it does not exist)."""
        if name in self.aliases().values() or self._vector_params(name) is None:
            return False
        self._drop_collection(name)
        with self._shared.lock:
            self._shared.packs.pop(name, None)
        return True

    def _target(self, tenant: str) -> str:
        """The collection a tenant-scoped call of this index uses."""
        if not self._routed:
            return self.collection
        target = self.aliases().get(tenant_alias(self.base, validate_tenant_id(tenant)))
        return target if target is not None else self.collection

    def _written_everywhere(self) -> list[str]:
        """The collections a deletion must reach: the whole family (or a view's one)."""
        if not self._routed:
            return [self.collection] if self._vector_params(self.collection) is not None else []
        return self.family_collections()

    # --- points --------------------------------------------------------------------------

    def upsert(self, points: Sequence[FacePoint]) -> int:
        """Write a batch of faces (overwrites points with the same ids), one call per collection."""
        if not points:
            return 0
        groups: dict[str, list[FacePoint]] = {}
        for point in points:
            groups.setdefault(self._target(point.tenant_id), []).append(point)
        prepared = []
        for name, group in groups.items():
            payloads = [point.full_payload() for point in group]
            vectors = np.asarray([np.asarray(point.vector, dtype=np.float32) for point in group])
            if vectors.ndim != 2 or not np.all(np.isfinite(vectors)):
                raise ValueError("every vector must be a finite float vector of the same size")
            prepared.append((name, [point.id for point in group], vectors, payloads))
        for name, ids, vectors, payloads in prepared:
            self._upsert(name, ids, vectors, payloads)
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
        name = self._target(tenant_id)
        if self._vector_params(name) is None:
            return []
        query = np.asarray(vector, dtype=np.float32)
        return self._query(name, query, flt, max(1, int(top_k)), score_threshold)

    def scroll(
        self, tenant_id: str, image_sha256: str | None = None, batch: int = 256, with_vectors: bool = False
    ) -> Iterator[SearchHit]:
        """Every point of a tenant (or of one image of a tenant), in point id order.

        Payloads always; vectors when ``with_vectors``."""
        offset: Any = None
        while True:
            hits, offset = self.scroll_page(tenant_id, batch, offset, image_sha256, with_vectors)
            yield from hits
            if offset is None:
                return

    def scroll_page(
        self,
        tenant_id: str,
        limit: int,
        offset: Any = None,
        image_sha256: str | None = None,
        with_vectors: bool = False,
    ) -> tuple[list[SearchHit], Any]:
        """One page of :meth:`scroll` and the offset the next page starts at (None after the last).

        The offset is a point id, so a caller may keep it (a resumable backfill does)."""
        flt = PointFilter.of_tenant(tenant_id, image_sha256=image_sha256)
        name = self._target(tenant_id)
        if self._vector_params(name) is None:
            return [], None
        return self._scroll_page(name, flt, limit, offset, with_vectors)

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Which of ``ids`` this collection holds (a view's; the base collection's for the family)."""
        wanted = list(ids)
        if not wanted or self._vector_params(self.collection) is None:
            return set()
        return self._existing_ids(self.collection, wanted)

    def _delete_counted(self, flt: PointFilter) -> int:
        removed = 0
        for name in self._written_everywhere():
            count = self._count(name, flt)
            if count:
                self._delete(name, flt)
            removed += count
        return removed

    def delete_image(self, tenant_id: str, image_sha256: str) -> int:
        """Remove every face of one image of one tenant from every collection; how many points there were."""
        return self._delete_counted(PointFilter.of_tenant(tenant_id, image_sha256=image_sha256))

    def delete_tenant(self, tenant_id: str) -> int:
        """Remove every face of one tenant from every collection; how many points there were."""
        return self._delete_counted(PointFilter.of_tenant(tenant_id))

    def count(self, tenant_id: str | None = None) -> int:
        """Points of one tenant (where its searches go), or of every tenant in this collection."""
        name = self._target(tenant_id) if tenant_id is not None else self.collection
        if self._vector_params(name) is None:
            return 0
        return self._count(name, PointFilter.of_tenant(tenant_id) if tenant_id is not None else None)
