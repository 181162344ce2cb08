"""Create the S3 buckets and the vector collection (``facepipe ensure``, ``make phase3-ensure``).

Idempotent: what exists is left alone. The collection's vector size is the model pack's
(MODEL_PACK); an existing collection of another size is reported, not touched.
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
    dim = get_pack(settings.model_pack).dim
    vectors = index if index is not None else VectorIndex(settings)
    try:
        made = vectors.ensure_collection(dim)
    finally:
        if index is None:
            vectors.close()
    return EnsureReport(store.buckets, tuple(created), settings.qdrant_collection, dim, made)
