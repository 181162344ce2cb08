"""The indexer while a tenant changes model packs: each pack's vectors in its own collection, nothing refused.

Real Redis, SeaweedFS and Qdrant Edge; hand-built embedded messages (conftest), and in the
send-back test the real buffalo_sc embedder, which embeds the returned crops again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from facepipe.core.messages import MAX_REEMBED_HOPS
from facepipe.core.packs import get_pack
from facepipe.core.settings import Settings, dlq_stream
from facepipe.core.worker import Worker
from facepipe.embedder.handler import EmbedderHandler
from facepipe.store.pack_migration import MigrationRecords
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex
from facepipe.store.vectors.naming import tenant_alias

BUFFALO = get_pack("buffalo_sc")
SFACE = get_pack("opencv_yunet_sface")
SHA = "c3" * 32
FACES = [(0, "8f373c9c3c9c3c1e", 1), (1, "0123456789abcdef", 2)]

MakeMessage = Callable[..., dict[str, Any]]
Publish = Callable[[dict[str, Any]], str]
RunIndexer = Callable[..., int]
OpenIndex = Callable[[Settings], VectorIndex]


def test_a_new_tenant_starts_on_its_pack_collection_and_its_record_notes_the_pack(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    redis_client: redis.Redis,
) -> None:
    publish(make_message("demo", SHA, FACES))
    assert run_indexer(settings) == 0
    index = open_index(settings)
    collection = f"{settings.qdrant_collection}_buffalo_sc_v1"
    assert index.aliases() == {tenant_alias(settings.qdrant_collection, "demo"): collection}
    assert index.view(collection).count("demo") == 2 and index.count("demo") == 2
    assert index.view(settings.qdrant_collection).vector_size() is None  # the base collection: never made
    record = MigrationRecords(redis_client, settings.qdrant_collection).load("demo")
    assert record is not None and record.active == "buffalo_sc"


def test_while_pods_change_pack_each_pack_goes_to_its_own_collection(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    redis_client: redis.Redis,
) -> None:
    publish(make_message("demo", SHA, FACES))
    assert run_indexer(settings) == 0  # demo searches with buffalo_sc from now on

    new_pods = settings.model_copy(update={"model_pack": SFACE.name})
    publish(make_message("demo", "d4" * 32, [(0, "1111111111111111", 3)], pack=SFACE.name, dim=SFACE.dim))
    publish(make_message("demo", "e5" * 32, [(0, "2222222222222222", 4)]))  # an old pod's message
    assert run_indexer(new_pods) == 0
    assert redis_client.xlen(dlq_stream(settings.embedded_stream)) == 0
    index = open_index(settings)
    assert index.route("demo").pack == BUFFALO  # searches stay where they were until a backfill switches
    assert index.count("demo") == 3
    sface = index.view(f"{settings.qdrant_collection}_opencv_yunet_sface_v1")
    assert sface.vector_size() == 128 and sface.count("demo") == 1


def test_a_message_of_a_pack_no_longer_used_goes_back_to_the_embedder_and_returns_indexed(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    open_index: OpenIndex,
    store: ObjectStore,
    redis_client: redis.Redis,
    buffalo_sc: Any,
) -> None:
    publish(make_message("demo", SHA, FACES))
    assert run_indexer(settings) == 0
    late = make_message("demo", "f6" * 32, [(0, "3333333333333333", 5)], pack=SFACE.name, dim=SFACE.dim)
    publish(late)  # e.g. a DLQ replay of a message from an embedder of a pack rolled back since
    assert run_indexer(settings) == 0

    assert redis_client.xlen(dlq_stream(settings.embedded_stream)) == 0
    [(_id, fields)] = redis_client.xrange(settings.detected_stream)
    again = json.loads(fields["message"])
    assert again["reembed_hops"] == 1 and again["model"]["pack"] == SFACE.name
    assert "embedding_b64" not in again["faces"][0]
    assert again["faces"][0]["crop_jpeg_b64"] == late["faces"][0]["crop_jpeg_b64"]
    index = open_index(settings)
    assert index.count("demo") == 2  # nothing of it stored yet
    index.close()  # the embedded store admits one holder: the indexer below
    assert not list(store.list_keys(settings.bucket_crops, "demo/f6/"))
    assert not [key for key in redis_client.keys("dedup:t:demo:img:*") if "f6f6" in key]

    embedder = EmbedderHandler(settings, embedder=buffalo_sc.embedder)
    assert Worker(settings, embedder, max_batch=10, once=True).run() == 0
    assert run_indexer(settings) == 0
    assert open_index(settings).count("demo") == 3  # embedded with buffalo_sc, indexed where demo searches
    assert len(list(store.list_keys(settings.bucket_crops, "demo/f6/"))) == 1


def test_a_message_sent_back_too_often_is_dead_lettered(
    settings: Settings,
    make_message: MakeMessage,
    publish: Publish,
    run_indexer: RunIndexer,
    redis_client: redis.Redis,
) -> None:
    publish(make_message("demo", SHA, FACES))
    assert run_indexer(settings) == 0
    looping = make_message("demo", "a7" * 32, [(0, "4444444444444444", 6)], pack=SFACE.name, dim=SFACE.dim)
    looping["reembed_hops"] = MAX_REEMBED_HOPS
    publish(looping)
    assert run_indexer(settings) == 0
    [(_id, fields)] = redis_client.xrange(dlq_stream(settings.embedded_stream))
    assert fields["reason"] == "model_pack_mismatch"
    assert "is an embedder of an old pack still running?" in fields["error"]
    assert redis_client.xlen(settings.detected_stream) == 0


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return ObjectStore(settings)
