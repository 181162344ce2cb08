"""``python -m facepipe.store.ensure`` (``make phase3-ensure``): create buckets and the collection.

Idempotent: what exists is left alone. The collection's vector size is the model pack's
(MODEL_PACK); an existing collection of another size is reported, not touched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from facepipe.core.logs import setup_logging
from facepipe.core.packs import get_pack
from facepipe.core.settings import Settings, get_settings
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex

log = logging.getLogger("facepipe.ensure")


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


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m facepipe.store.ensure", description=__doc__).parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level)
    try:
        report = ensure_storage_and_collection(settings)
    except Exception as exc:
        log.error("ensure failed: %s: %s", type(exc).__name__, exc)
        return 1
    for bucket in report.buckets:
        log.info("bucket %s: %s", bucket, "created" if bucket in report.buckets_created else "exists")
    where = f"embedded at {settings.qdrant_path}" if settings.qdrant_embedded else settings.qdrant_url
    log.info(
        "collection %s (%d-d cosine, %s): %s",
        report.collection,
        report.dim,
        where,
        "created" if report.collection_created else "exists",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
