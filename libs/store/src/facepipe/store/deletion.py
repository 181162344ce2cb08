"""Deletion primitives (GDPR): every trace of one image of a tenant, or of a whole tenant.

What is deleted, in this order (search stops returning the faces first):

1. the Qdrant points (their payloads are read first: they name the raw image's bucket/key);
2. the artifacts: crops, thumbnails and metadata JSON under ``<tenant>/<sha[:2]>/<sha>/``
   (or ``<tenant>/`` for a tenant), the raw image(s) under the same prefix in the raw bucket
   (where ``facepipe ingest`` puts them) and the raw objects the points name in the raw bucket
   when their key lies under ``<tenant>/`` (a raw object elsewhere may be shared with another
   tenant: the producer that chose that key deletes it);
3. the dedup entries (owner keys, bucket records, write-log entries), even when dedup is disabled;
4. the entries about the image (or tenant) in the pipeline streams and their DLQs, which carry
   its crops and embeddings (``stream_entries``); for a tenant also its stats keys.

Not deleted: the cluster-wide counters (numbers, no face data). A message of the image that a
worker is processing at this moment can still re-create what was deleted; delete again once the
streams are drained.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from facepipe.core.settings import Settings
from facepipe.core.stats import Stats
from facepipe.core.tenancy import validate_tenant_id
from facepipe.store.dedup import DedupCache
from facepipe.store.storage import ObjectStore, image_prefix, tenant_prefix
from facepipe.store.stream_entries import delete_entries
from facepipe.store.vectors import VectorIndex


@dataclass(frozen=True)
class DeletionReport:
    tenant_id: str
    image_sha256: str | None  # None: the whole tenant
    points: int  # Qdrant points removed
    artifacts: int  # crop, thumbnail and metadata objects removed
    raw_objects: int  # raw images removed
    dedup_entries: int  # image: remembered pHashes forgotten; tenant: dedup keys removed
    stream_entries: int = 0  # entries about it removed from the pipeline streams and their DLQs
    stats_keys: int = 0  # tenant: its per-tenant stats keys removed


class _Clients:
    """The callers' clients, or new ones (closed again) for what they did not pass."""

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis | None,
        store: ObjectStore | None,
        index: VectorIndex | None,
    ) -> None:
        self.redis = redis_client if redis_client is not None else redis.Redis.from_url(settings.redis_url)
        self.store = store if store is not None else ObjectStore(settings)
        self.index = index if index is not None else VectorIndex(settings)
        self._own_index = index is None
        self._own_redis = redis_client is None

    def close(self) -> None:
        if self._own_index:
            self.index.close()
        if self._own_redis:
            self.redis.close()


def _raw_keys(settings: Settings, index: VectorIndex, tenant: str, image_sha256: str | None) -> set[str]:
    """Raw-bucket keys named by the points' ``source`` (a producer's own key layout)."""
    keys: set[str] = set()
    if index.vector_size() is None:
        return keys
    for hit in index.scroll(tenant, image_sha256=image_sha256):
        source = hit.payload.get("source") or {}
        if source.get("bucket") == settings.bucket_raw and source.get("key"):
            keys.add(str(source["key"]))
    return keys


def _delete_everywhere(
    settings: Settings, clients: _Clients, tenant: str, image_sha256: str | None, prefix: str
) -> tuple[int, int, int]:
    raw_keys = _raw_keys(settings, clients.index, tenant, image_sha256)
    if clients.index.vector_size() is None:
        points = 0
    elif image_sha256 is None:
        points = clients.index.delete_tenant(tenant)
    else:
        points = clients.index.delete_image(tenant, image_sha256)
    store = clients.store
    artifacts = sum(
        store.delete_prefix(bucket, prefix)
        for bucket in (settings.bucket_crops, settings.bucket_thumbs, settings.bucket_metadata)
    )
    raw = store.delete_prefix(settings.bucket_raw, prefix)
    own = tenant_prefix(tenant)
    for key in sorted(raw_keys):
        if key.startswith(own) and not key.startswith(prefix) and store.exists(settings.bucket_raw, key):
            store.delete(settings.bucket_raw, key)
            raw += 1
    return points, artifacts, raw


def delete_image(
    settings: Settings,
    tenant_id: str,
    image_sha256: str,
    *,
    redis_client: redis.Redis | None = None,
    store: ObjectStore | None = None,
    index: VectorIndex | None = None,
) -> DeletionReport:
    """Delete one image of one tenant: its points, artifacts, raw image and dedup entries."""
    tenant = validate_tenant_id(tenant_id)
    prefix = image_prefix(tenant, image_sha256)  # also refuses an image id that could escape the prefix
    clients = _Clients(settings, redis_client, store, index)
    try:
        points, artifacts, raw = _delete_everywhere(settings, clients, tenant, image_sha256, prefix)
        forgotten = DedupCache(clients.redis, settings).forget_image(tenant, image_sha256)
        entries = delete_entries(clients.redis, settings.pipeline_streams, tenant, image_sha256)
    finally:
        clients.close()
    return DeletionReport(tenant, image_sha256, points, artifacts, raw, forgotten, entries)


def purge_tenant(
    settings: Settings,
    tenant_id: str,
    *,
    redis_client: redis.Redis | None = None,
    store: ObjectStore | None = None,
    index: VectorIndex | None = None,
) -> DeletionReport:
    """Delete everything of one tenant: points, artifacts, raw images under its prefix, dedup keys."""
    tenant = validate_tenant_id(tenant_id)
    clients = _Clients(settings, redis_client, store, index)
    try:
        points, artifacts, raw = _delete_everywhere(settings, clients, tenant, None, tenant_prefix(tenant))
        dedup_keys = DedupCache(clients.redis, settings).flush(tenant)
        entries = delete_entries(clients.redis, settings.pipeline_streams, tenant)
        stats_keys = _delete_tenant_stats(clients.redis, tenant)
    finally:
        clients.close()
    return DeletionReport(tenant, None, points, artifacts, raw, dedup_keys, entries, stats_keys)


def _delete_tenant_stats(client: redis.Redis, tenant: str) -> int:
    """The tenant's own counters and timings (``stats:tenant:<tenant>:*``)."""
    keys = list(client.scan_iter(match=f"{Stats(client).prefix}:tenant:{tenant}:*", count=1000))
    return int(client.delete(*keys)) if keys else 0


# ops-api's name for purge_tenant.
delete_tenant = purge_tenant
