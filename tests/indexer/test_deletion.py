"""Deletion primitives on what the indexer really wrote (Redis, SeaweedFS, embedded Qdrant Edge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from facepipe.core.errors import PermanentError
from facepipe.core.settings import Settings
from facepipe.store import deletion
from facepipe.store.dedup import DedupCache, Owner
from facepipe.store.storage import ObjectStore, image_prefix
from facepipe.store.vectors import VectorIndex

SHA_1, SHA_2, SHA_3 = "11" * 32, "22" * 32, "33" * 32
FACES_1 = [(0, "8f373c9c3c9c3c1e", 1), (1, "0123456789abcdef", 2)]
FACES_2 = [(0, "fedcba9876543210", 3)]


@pytest.fixture
def indexed(
    settings: Settings,
    make_message: Callable[..., dict[str, Any]],
    publish: Callable[[dict[str, Any]], str],
    run_indexer: Callable[..., int],
    store: ObjectStore,
) -> None:
    """Tenant a: images 1 and 2 (raw images under the tenant's prefix); tenant b: image 1 too."""
    store.ensure_buckets()
    for tenant, sha, faces in (("a", SHA_1, FACES_1), ("a", SHA_2, FACES_2), ("b", SHA_1, FACES_1)):
        raw_key = f"{image_prefix(tenant, sha)}original.jpg"
        store.put_bytes(settings.bucket_raw, raw_key, b"raw image bytes", "image/jpeg")
        publish(make_message(tenant, sha, faces, raw_key=raw_key, raw_bucket=settings.bucket_raw))
    # A producer's own layout: a raw key named only by the message (and the point's payload).
    store.put_bytes(settings.bucket_raw, "a/uploads/three.jpg", b"raw", "image/jpeg")
    publish(
        make_message(
            "a",
            SHA_3,
            [(0, "00000000ffff0000", 4)],
            raw_key="a/uploads/three.jpg",
            raw_bucket=settings.bucket_raw,
        )
    )
    assert run_indexer(settings) == 0


def keys_under(store: ObjectStore, settings: Settings, prefix: str) -> list[str]:
    buckets = (settings.bucket_raw, settings.bucket_crops, settings.bucket_thumbs, settings.bucket_metadata)
    return [f"{bucket}/{key}" for bucket in buckets for key in store.list_keys(bucket, prefix)]


def test_delete_image_removes_every_trace_of_that_image_only(
    indexed: None,
    settings: Settings,
    store: ObjectStore,
    redis_client: redis.Redis,
) -> None:
    index = VectorIndex(settings)
    try:
        report = deletion.delete_image(
            settings, "a", SHA_1, redis_client=redis_client, store=store, index=index
        )
        assert (report.points, report.artifacts, report.raw_objects, report.dedup_entries) == (2, 6, 1, 2)
        assert [hit.payload["image_sha256"] for hit in index.scroll("a", image_sha256=SHA_1)] == []
        assert index.count("a") == 2  # images 2 and 3
        assert index.count("b") == 2  # the same image id in tenant b is untouched
    finally:
        index.close()
    assert keys_under(store, settings, image_prefix("a", SHA_1)) == []
    assert len(keys_under(store, settings, image_prefix("b", SHA_1))) == 7  # raw + 3 artifacts x 2 faces
    assert len(keys_under(store, settings, image_prefix("a", SHA_2))) == 4
    cache = DedupCache(redis_client, settings)
    # The deleted faces no longer suppress anything; the other images' faces still do.
    assert not cache.lookup("a", "8f373c9c3c9c3c1e", Owner("new", 0)).is_duplicate
    assert cache.lookup("a", "fedcba9876543210", Owner("new", 0)).is_duplicate
    assert cache.lookup("b", "8f373c9c3c9c3c1e", Owner("new", 0)).is_duplicate

    # The raw key named only by the payload goes with its image.
    report = deletion.delete_image(settings, "a", SHA_3, redis_client=redis_client, store=store)
    assert (report.points, report.raw_objects) == (1, 1)
    assert not store.exists(settings.bucket_raw, "a/uploads/three.jpg")
    # Deleting again finds nothing and fails nothing.
    again = deletion.delete_image(settings, "a", SHA_1, redis_client=redis_client, store=store)
    assert (again.points, again.artifacts, again.raw_objects, again.dedup_entries) == (0, 0, 0, 0)


def test_purge_tenant_removes_the_tenant_and_nothing_else(
    indexed: None,
    settings: Settings,
    store: ObjectStore,
    redis_client: redis.Redis,
) -> None:
    report = deletion.purge_tenant(settings, "a", redis_client=redis_client, store=store)
    assert report.points == 4 and report.artifacts == 12 and report.raw_objects == 3
    assert report.dedup_entries > 0
    assert keys_under(store, settings, "a/") == []
    assert redis_client.keys("dedup:t:a:*") == []
    assert redis_client.keys("dedup:t:b:*") != []
    assert len(keys_under(store, settings, "b/")) == 7
    index = VectorIndex(settings)
    try:
        assert index.count("a") == 0
        assert index.count("b") == 2
    finally:
        index.close()
    assert deletion.delete_tenant is deletion.purge_tenant


def test_deletion_refuses_ids_that_could_escape_their_prefix(
    settings: Settings, redis_client: redis.Redis
) -> None:
    for tenant, sha in (("../a", SHA_1), ("*", SHA_1), ("a", "../x"), ("a", "x/y")):
        with pytest.raises(PermanentError):
            deletion.delete_image(settings, tenant, sha, redis_client=redis_client)
    with pytest.raises(PermanentError):
        deletion.purge_tenant(settings, "a:b", redis_client=redis_client)
