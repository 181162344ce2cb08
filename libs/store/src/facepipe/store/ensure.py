"""Create the S3 buckets and the vector collection (``facepipe ensure``, ``make phase3-ensure``).

Idempotent: what exists is left alone. The collection is MODEL_PACK's collection of the
family QDRANT_COLLECTION (``<collection>_<pack>_v<version>``, sized for the pack).
"""

from __future__ import annotations

from dataclasses import dataclass

from facepipe.core.packs import get_pack
from facepipe.core.settings import Settings
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex


@dataclass(frozen=True)
class EnsureReport:
    buckets: tuple[str, ...]
    buckets_created: tuple[str, ...]
    collection: str
    dim: int
    collection_created: bool


def ensure_storage_and_collection(settings: Settings, index: VectorIndex | None = None) -> EnsureReport:
    """Create the four buckets and the collection (with its payload indexes) when missing."""
    store = ObjectStore(settings)
    created = store.ensure_buckets()
    pack = get_pack(settings.model_pack)
    vectors = index if index is not None else VectorIndex(settings)
    try:
        collection = vectors.view(vectors.pack_collection(pack))
        made = collection.ensure_collection(pack.dim)
    finally:
        if index is None:
            vectors.close()
    return EnsureReport(store.buckets, tuple(created), collection.collection, pack.dim, made)
