"""ObjectStore against a real SeaweedFS S3 server."""

from __future__ import annotations

import os

import pytest

from facepipe.core.errors import PermanentError, TransientError, is_transient
from facepipe.core.settings import Settings
from facepipe.store.storage import ObjectStore, artifact_keys, image_prefix, tenant_prefix


def test_ensure_buckets_is_idempotent_and_makes_store_healthy(settings: Settings) -> None:
    store = ObjectStore(settings)
    assert not store.healthy()  # fresh bucket names: nothing exists yet

    created = store.ensure_buckets()
    assert sorted(created) == sorted(
        [settings.bucket_raw, settings.bucket_crops, settings.bucket_thumbs, settings.bucket_metadata]
    )
    assert store.ensure_buckets() == []
    assert store.healthy()


def test_put_get_stat_round_trip(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_buckets()
    data = os.urandom(3000)
    store.put_bytes(settings.bucket_crops, "t1/ab/abc/face_0.jpg", data, "image/jpeg")

    assert store.get_bytes(settings.bucket_crops, "t1/ab/abc/face_0.jpg") == data
    info = store.stat(settings.bucket_crops, "t1/ab/abc/face_0.jpg")
    assert (info.size, info.content_type) == (3000, "image/jpeg")
    assert store.exists(settings.bucket_crops, "t1/ab/abc/face_0.jpg")
    # Overwriting the same key is how a redelivered message stays idempotent.
    store.put_bytes(settings.bucket_crops, "t1/ab/abc/face_0.jpg", b"second", "image/jpeg")
    assert store.get_bytes(settings.bucket_crops, "t1/ab/abc/face_0.jpg") == b"second"


def test_missing_object_or_bucket_is_permanent_object_not_found(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_buckets()
    with pytest.raises(PermanentError) as missing_key:
        store.get_bytes(settings.bucket_raw, "nope/never.jpg")
    assert missing_key.value.reason == "object_not_found"
    with pytest.raises(PermanentError) as missing_bucket:
        store.get_bytes("no-such-bucket-here", "x.jpg")
    assert missing_bucket.value.reason == "object_not_found"
    with pytest.raises(PermanentError) as missing_stat:
        store.stat(settings.bucket_raw, "nope/never.jpg")
    assert missing_stat.value.reason == "object_not_found"
    assert not store.exists(settings.bucket_raw, "nope/never.jpg")


def test_get_bytes_refuses_objects_over_max_bytes(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_buckets()
    store.put_bytes(settings.bucket_raw, "big.bin", b"x" * 5000)

    with pytest.raises(PermanentError) as too_large:
        store.get_bytes(settings.bucket_raw, "big.bin", max_bytes=4999)
    assert too_large.value.reason == "image_too_large"
    assert len(store.get_bytes(settings.bucket_raw, "big.bin", max_bytes=5000)) == 5000


def test_delete_and_delete_prefix_stay_inside_the_prefix(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_buckets()
    bucket = settings.bucket_metadata
    for key in ("t1/aa/img1/face_0.json", "t1/aa/img1/face_1.json", "t1/bb/img2/face_0.json", "t10/x.json"):
        store.put_bytes(bucket, key, b"{}", "application/json")

    assert store.delete_prefix(bucket, "t1/aa/img1/") == 2
    assert sorted(store.list_keys(bucket, "")) == ["t1/bb/img2/face_0.json", "t10/x.json"]
    assert store.delete_prefix(bucket, tenant_prefix("t1")) == 1
    assert sorted(store.list_keys(bucket, "")) == ["t10/x.json"]  # "t1/" never matches "t10/"

    store.delete(bucket, "t10/x.json")
    store.delete(bucket, "t10/x.json")  # deleting a missing object is fine
    assert list(store.list_keys(bucket, "")) == []
    with pytest.raises(ValueError):
        store.delete_prefix(bucket, "")
    assert store.delete_prefix("no-such-bucket-here", "t1/") == 0


def test_unreachable_endpoint_is_transient_and_unhealthy(settings: Settings, refused_port: int) -> None:
    down = settings.model_copy(update={"minio_endpoint": f"127.0.0.1:{refused_port}"})
    store = ObjectStore(down)
    assert not store.healthy()
    with pytest.raises(TransientError) as failure:
        store.get_bytes(settings.bucket_raw, "x.jpg")
    assert is_transient(failure.value)
    with pytest.raises(TransientError):
        store.put_bytes(settings.bucket_raw, "x.jpg", b"data")


def test_wrong_credentials_are_not_reported_as_missing_objects(settings: Settings) -> None:
    store = ObjectStore(settings)
    store.ensure_buckets()
    store.put_bytes(settings.bucket_raw, "secret.jpg", b"data")
    intruder = ObjectStore(settings.model_copy(update={"minio_secret_key": "wrong-secret"}))
    with pytest.raises(Exception) as denied:
        intruder.get_bytes(settings.bucket_raw, "secret.jpg")
    assert not isinstance(denied.value, PermanentError)  # a misconfiguration must not DLQ messages
    assert not intruder.healthy()


def test_artifact_keys_are_deterministic_and_tenant_safe() -> None:
    keys = artifact_keys("demo", "abcdef0123", 2)
    assert keys == artifact_keys("demo", "abcdef0123", 2)
    assert keys.crop == "demo/ab/abcdef0123/face_2.jpg"
    assert keys.metadata == "demo/ab/abcdef0123/face_2.json"
    assert keys.crop.startswith(image_prefix("demo", "abcdef0123"))
    for bad_tenant in ("../x", "a/b", "*", ""):
        with pytest.raises(PermanentError) as bad:
            artifact_keys(bad_tenant, "abcdef0123", 0)
        assert bad.value.reason == "invalid_tenant_id"
    with pytest.raises(PermanentError):
        artifact_keys("demo", "../../etc", 0)
