"""The indexer worker on a real stream: Redis, SeaweedFS and the embedded Qdrant Edge store, no mocks."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
import redis

from facepipe.core.settings import Settings, dlq_stream, load_settings
from facepipe.core.stats import Stats
from facepipe.core.worker import StreamMessage, ensure_group
from facepipe.indexer import IndexerHandler
from facepipe.store.dedup import DedupCache, Owner
from facepipe.store.storage import ObjectStore, artifact_keys, image_prefix
from facepipe.store.vectors import VectorIndex, point_id

SHA_A = "a1" * 32
SHA_B = "b2" * 32
FACES = [(0, "8f373c9c3c9c3c1e", 1), (1, "0123456789abcdef", 2)]
# The same two faces, as another image would give them: one identical pHash, one 3 bits away.
NEAR_FACES = [(0, "8f373c9c3c9c3c1e", 11), (1, "0123456789abcd10", 12)]

MakeMessage = Callable[..., dict[str, Any]]
Publish = Callable[[dict[str, Any]], str]
RunIndexer = Callable[..., int]
OpenIndex = Callable[[Settings], VectorIndex]


def pending(client: redis.Redis, settings: Settings) -> int:
    return int(client.xpending(settings.embedded_stream, settings.redis_group_name)["pending"])


def counters(client: redis.Redis) -> dict[str, int]:
    return Stats(client).snapshot()["counters"]


def test_indexes_faces_with_artifacts_at_the_payload_keys(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    store: ObjectStore,
    redis_client: redis.Redis,
    vector_of: Callable[[int], np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    message = make_message("demo", SHA_A, FACES, rejected=1)
    entry = publish(message)
    with caplog.at_level(logging.INFO):
        assert run_indexer(settings) == 0
    assert (
        f"Successfully processed message {entry}: faces_total=3, accepted=2, rejected=1, dup_skipped=0"
        in caplog.text
    )
    assert pending(redis_client, settings) == 0

    index = open_index(settings)
    assert index.count("demo") == 2
    hits = {hit.payload["face_index"]: hit for hit in index.scroll("demo")}
    assert set(hits) == {0, 1}
    for face_index, phash, seed in FACES:
        hit = hits[face_index]
        assert hit.id == point_id("demo", SHA_A, face_index)
        payload = hit.payload
        assert payload["tenant_id"] == "demo" and payload["site"] == "example.com"
        assert payload["url"] == f"https://example.com/{SHA_A}.jpg"
        assert (payload["image_sha256"], payload["phash"], payload["phash_prefix"]) == (
            SHA_A,
            phash,
            phash[:4],
        )
        assert payload["bbox"] == message["faces"][face_index]["bbox"]
        assert payload["det_score"] == 0.9 and payload["quality"]["blur_var"] == 120.5
        assert payload["model_pack"] == "buffalo_sc" and payload["model"]["dim"] == 512
        assert payload["created_at"].endswith("+00:00")
        keys = artifact_keys("demo", SHA_A, face_index)
        artifacts = payload["artifacts"]
        assert artifacts["crop"] == {"bucket": settings.bucket_crops, "key": keys.crop}
        # The artifacts are where the payload says, with the right content.
        crop = store.get_bytes(artifacts["crop"]["bucket"], artifacts["crop"]["key"])
        assert crop == base64.b64decode(message["faces"][face_index]["crop_jpeg_b64"])
        thumb = store.get_bytes(artifacts["thumb"]["bucket"], artifacts["thumb"]["key"])
        assert cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)
        metadata = json.loads(store.get_bytes(artifacts["metadata"]["bucket"], artifacts["metadata"]["key"]))
        assert metadata["image_sha256"] == SHA_A and metadata["face_index"] == face_index
        assert len(metadata["landmarks"]) == 5 and metadata["artifacts"] == artifacts
        # The stored vector is the message's embedding.
        best = index.search("demo", vector_of(seed), top_k=1)[0]
        assert best.id == hit.id and best.score == pytest.approx(1.0, abs=1e-5)

    stats = Stats(redis_client).snapshot()
    assert stats["counters"]["faces_processed"] == 2
    assert stats["counters"]["faces_dup_skipped"] == 0
    assert stats["counters"]["worker_msgs_acked"] == 1
    assert stats["timings_ms"]["storage"]["count"] == 6  # crop, thumbnail, metadata per face
    assert stats["timings_ms"]["upsert"]["count"] == 1


def take_and_die(client: redis.Redis, settings: Settings) -> StreamMessage:
    """Read one entry as a consumer that then dies without acking (it stays pending, then is reclaimed)."""
    ensure_group(client, settings.embedded_stream, settings.redis_group_name)
    reply = client.xreadgroup(
        settings.redis_group_name, "crashed-consumer", {settings.embedded_stream: ">"}, count=1
    )
    entry_id, fields = reply[0][1][0]
    return StreamMessage(entry_id, settings.embedded_stream, json.loads(fields["message"]), fields, 1)


@pytest.fixture
def reclaiming(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose workers reclaim entries idle for 100 ms (a dead consumer's)."""
    monkeypatch.setenv("CLAIM_IDLE_MS", "100")
    return load_settings()


def test_crash_between_dedup_remember_and_upsert_loses_no_face(
    reclaiming: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    store: ObjectStore,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = reclaiming
    publish(make_message("demo", SHA_A, FACES))
    taken = take_and_die(redis_client, settings)
    # What the dead consumer got done: the dedup commit of the faces, owned by this entry.
    cache = DedupCache(redis_client, settings)
    owners = [(phash, Owner(SHA_A, index, taken.id)) for index, phash, _seed in FACES]
    assert [r.is_duplicate for r in cache.check_and_remember_batch([("demo", owners)])[0]] == [False, False]
    time.sleep(0.3)
    with caplog.at_level(logging.INFO):
        assert run_indexer(settings) == 0
    assert (
        f"Successfully processed message {taken.id}: faces_total=2, accepted=2, rejected=0, dup_skipped=0"
        in (caplog.text)
    )
    assert pending(redis_client, settings) == 0
    assert open_index(settings).count("demo") == 2
    assert store.exists(settings.bucket_crops, artifact_keys("demo", SHA_A, 1).crop)


def test_crash_after_upsert_before_ack_is_reindexed_idempotently(
    reclaiming: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = reclaiming
    publish(make_message("demo", SHA_A, FACES))
    taken = take_and_die(redis_client, settings)
    # The dead consumer did all the work (dedup, S3, Qdrant) and died before its ack.
    handler = IndexerHandler(settings)
    handler.setup()
    try:
        assert [type(r).__name__ for r in handler.process_batch([taken])] == ["Outcome"]
        assert handler.index.count("demo") == 2
    finally:
        handler.close()
    time.sleep(0.3)
    with caplog.at_level(logging.INFO):
        assert run_indexer(settings) == 0
    assert (
        f"Successfully processed message {taken.id}: faces_total=2, accepted=2, rejected=0, dup_skipped=0"
        in (caplog.text)
    )
    assert "near-duplicate" not in caplog.text
    assert pending(redis_client, settings) == 0
    assert counters(redis_client)["faces_processed"] == 2  # counted once: with the one ack
    assert open_index(settings).count("demo") == 2


def test_the_same_event_published_twice_is_indexed_twice_without_new_points(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    redis_client: redis.Redis,
) -> None:
    # A stage that published and died before its ack publishes again on redelivery: both copies
    # carry the ingest entry they came from (source.id), so they are one event, not duplicates.
    message = {
        **make_message("demo", SHA_A, FACES),
        "source": {"stream": "face-processing-queue", "id": "5-0"},
    }
    publish(message)
    publish(message)
    assert run_indexer(settings) == 0
    assert counters(redis_client)["faces_processed"] == 4
    assert counters(redis_client)["faces_dup_skipped"] == 0
    assert open_index(settings).count("demo") == 2


def test_the_same_image_ingested_again_is_dup_skipped_without_new_points(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(make_message("demo", SHA_A, FACES))
    assert run_indexer(settings) == 0
    again = publish(make_message("demo", SHA_A, FACES))  # the Phase 3 "second run (same images)"
    with caplog.at_level(logging.INFO):
        assert run_indexer(settings) == 0
    assert (
        f"Successfully processed message {again}: faces_total=2, accepted=0, rejected=0, dup_skipped=2"
        in (caplog.text)
    )
    assert counters(redis_client)["faces_processed"] == 2
    assert counters(redis_client)["faces_dup_skipped"] == 2
    assert open_index(settings).count("demo") == 2


def test_the_same_faces_from_another_image_are_dup_skipped(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    store: ObjectStore,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publish(make_message("demo", SHA_A, FACES))
    assert run_indexer(settings) == 0
    entry = publish(make_message("demo", SHA_B, NEAR_FACES))
    with caplog.at_level(logging.INFO):
        assert run_indexer(settings) == 0
    assert "Face 0 is near-duplicate (pHash: 8f373c9c3c9c3c1e), skipping" in caplog.text
    assert "Face 1 is near-duplicate (pHash: 0123456789abcd10), skipping" in caplog.text
    assert (
        f"Successfully processed message {entry}: faces_total=2, accepted=0, rejected=0, dup_skipped=2"
        in (caplog.text)
    )
    assert counters(redis_client)["faces_dup_skipped"] == 2
    assert counters(redis_client)["faces_processed"] == 2
    assert list(store.list_keys(settings.bucket_crops, image_prefix("demo", SHA_B))) == []
    assert pending(redis_client, settings) == 0

    # Another tenant with the very same faces is not anybody's duplicate.
    publish(make_message("other", SHA_B, NEAR_FACES))
    assert run_indexer(settings) == 0
    assert counters(redis_client)["faces_processed"] == 4
    index = open_index(settings)
    assert index.count("demo") == 2
    assert index.count("other") == 2


def test_with_dedup_disabled_nothing_is_skipped_and_no_dedup_key_is_written(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    redis_client: redis.Redis,
) -> None:
    monkeypatch.setenv("ENABLE_GLOBAL_DEDUP", "false")
    settings = load_settings()
    publish(make_message("demo", SHA_A, FACES))
    publish(make_message("demo", SHA_B, NEAR_FACES))
    assert run_indexer(settings) == 0
    assert counters(redis_client)["faces_processed"] == 4
    assert counters(redis_client)["faces_dup_skipped"] == 0
    assert redis_client.keys("dedup:*") == []
    assert open_index(settings).count("demo") == 4


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda m: m["faces"][0].update(embedding_b64="AAAA"), "invalid_embedding"),
        (lambda m: m["faces"][0].update(crop_jpeg_b64="bm90IGEganBlZw=="), "undecodable_crop"),
        (lambda m: m["model"].update(pack="opencv_yunet_sface", dim=128), "model_pack_mismatch"),
        (lambda m: m["ingest"].update(tenant_id="../other"), "invalid_fields"),
        (lambda m: m["faces"][1].update(phash="xyz"), "invalid_fields"),
        (lambda m: m["faces"][1].update(index=0), "invalid_fields"),
    ],
)
def test_bad_messages_go_to_the_dlq_without_touching_any_store(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    store: ObjectStore,
    redis_client: redis.Redis,
    mutate: Callable[[dict[str, Any]], None],
    reason: str,
) -> None:
    message = make_message("demo", SHA_A, FACES)
    mutate(message)
    good = publish(make_message("demo", SHA_B, [(0, "fedcba9876543210", 5)]))
    publish(message)
    assert run_indexer(settings) == 0
    dlq = redis_client.xrange(dlq_stream(settings.embedded_stream))
    assert [fields["reason"] for _id, fields in dlq] == [reason]
    assert pending(redis_client, settings) == 0
    owners = [redis_client.get(key) for key in redis_client.keys("dedup:t:*:owner:*")]
    assert owners and not any(owner.startswith(SHA_A) for owner in owners)  # only the good message's face
    assert redis_client.keys(f"dedup:t:*:img:{SHA_A}") == []
    assert list(store.list_keys(settings.bucket_crops, image_prefix("demo", SHA_A))) == []
    index = open_index(settings)
    assert [hit.payload["image_sha256"] for hit in index.scroll("demo")] == [
        SHA_B
    ]  # the good one went through
    assert good


def test_module_entry_point_runs_one_batch(
    env: dict[str, str],
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    open_index: OpenIndex,
) -> None:
    entry = publish(make_message("demo", SHA_A, FACES))
    result = subprocess.run(
        [sys.executable, "-m", "facepipe.indexer", "--once", "--max-batch", "4"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "Starting Redis Streams worker..." in result.stderr
    assert f"Successfully processed message {entry}: faces_total=2, accepted=2" in result.stderr
    assert open_index(settings).count("demo") == 2


def test_within_one_batch_the_earlier_message_keeps_the_face(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
) -> None:
    # Messages of a batch are prepared and stored concurrently, but dedup runs in stream order.
    for n in range(6):
        publish(make_message("demo", f"img{n}", [(0, f"8f373c9c3c9c3c1{n}", n)]))
    assert run_indexer(settings, max_batch=6) == 0
    assert [hit.payload["image_sha256"] for hit in open_index(settings).scroll("demo")] == ["img0"]


def test_a_message_the_dedup_refuses_does_not_fail_the_rest_of_its_batch(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A mock, because parsing already refuses every input the dedup would: the dedup refusing
    # one message of a batch (tenant "refused") cannot be produced through the stream otherwise.
    from facepipe.core.errors import PermanentError

    real_batch = DedupCache.check_and_claim_batch

    def batch(self: DedupCache, messages: list) -> list:
        if any(tenant == "refused" for tenant, _faces in messages):
            if len(messages) > 1:  # the whole batch refused (as for a bad pHash)...
                raise ValueError("a face the dedup cannot key")
            raise PermanentError("invalid_fields", "a face the dedup cannot key")  # ...then that message
        return real_batch(self, messages)

    monkeypatch.setattr(DedupCache, "check_and_claim_batch", batch)
    publish(make_message("demo", SHA_A, FACES[:1]))
    refused = publish(make_message("refused", SHA_B, FACES[1:]))
    publish(make_message("demo", SHA_B, [(0, "fedcba9876543210", 7)]))
    assert run_indexer(settings, max_batch=3) == 0
    indexed = sorted(hit.payload["image_sha256"] for hit in open_index(settings).scroll("demo"))
    assert indexed == [SHA_A, SHA_B]
    dlq = redis_client.xrange(dlq_stream(settings.embedded_stream))
    assert [(fields["source_id"], fields["reason"]) for _id, fields in dlq] == [(refused, "invalid_fields")]
    assert pending(redis_client, settings) == 0
