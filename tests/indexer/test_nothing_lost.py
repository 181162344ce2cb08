"""A face whose message does not reach the index leaves nothing that can hide it later.

The reproduction of issue 15: the collection disappears mid-run, the message is redelivered until
it is dead-lettered (MAX_DELIVERIES=2), the collection comes back, the same image is ingested
again: its faces must be indexed, not skipped as duplicates of faces that were never indexed.
And a face near a face another indexer is indexing right now waits for that one's fate.
Real Redis and SeaweedFS; the indexer runs as a worker thread of this process. The collection is
deleted by hand on a vector store server (the Qdrant REST stand-in), as an operator could; the
embedded store cannot lose a collection under the process that holds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY
from qdrantkit import rest_stand_in

from facepipe.core.settings import Settings, dlq_stream, load_settings
from facepipe.core.stats import Stats
from facepipe.core.worker import Worker
from facepipe.indexer import IndexerHandler
from facepipe.store.dedup import DedupCache, Owner
from facepipe.store.vectors import VectorIndex

SHA = "c3" * 32
FACES = [(0, "8f373c9c3c9c3c1e", 1), (1, "0123456789abcdef", 2)]
OTHER_INDEXER = Owner("d4" * 32, 0, "1700000000000-0")  # a face another indexer is indexing


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def indexer_thread(settings: Settings, index: VectorIndex, client: redis.Redis) -> Iterator[Worker]:
    worker = Worker(settings, IndexerHandler(settings, index=index))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # Its consumer group exists once its set-up (buckets, collection) is over.
        wait_for(lambda: client.exists(settings.embedded_stream) and client.xinfo_groups(
            settings.embedded_stream
        ), "the indexer to start consuming")
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)
        assert not thread.is_alive()


@pytest.fixture
def index(settings: Settings) -> Iterator[VectorIndex]:
    opened = VectorIndex(settings)
    yield opened
    opened.close()


def counters(client: redis.Redis) -> dict[str, int]:
    return Stats(client).snapshot()["counters"]


def transient_retries() -> float:
    return REGISTRY.get_sample_value("facepipe_worker_transient_errors_total", {"stage": "indexer"}) or 0.0


def pending(client: redis.Redis, settings: Settings) -> int:
    """Entries read and not acked on the indexer's stream (0 before its group exists)."""
    try:
        return int(client.xpending(settings.embedded_stream, settings.redis_group_name)["pending"])
    except redis.ResponseError:
        return 0


def test_a_dead_lettered_message_leaves_no_dedup_entry_and_its_image_is_indexed_when_ingested_again(
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    make_message: Callable[..., dict[str, Any]],
    publish: Callable[[dict[str, Any]], str],
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MAX_DELIVERIES", "2")
    monkeypatch.setenv("CLAIM_IDLE_MS", "100")
    with rest_stand_in(tmp_path / "qdrant-server") as url:
        monkeypatch.setenv("QDRANT_URL", url)
        settings = load_settings()
        index = VectorIndex(settings)
        index.ensure_collection(512)
        try:
            reingest_after_dead_letter(settings, index, make_message, publish, redis_client)
        finally:
            index.close()


def reingest_after_dead_letter(
    settings: Settings,
    index: VectorIndex,
    make_message: Callable[..., dict[str, Any]],
    publish: Callable[[dict[str, Any]], str],
    redis_client: redis.Redis,
) -> None:
    dlq = dlq_stream(settings.embedded_stream)
    with indexer_thread(settings, index, redis_client):
        index.client.delete_collection(settings.qdrant_collection)  # gone mid-run
        first = publish(make_message("demo", SHA, FACES))
        wait_for(lambda: redis_client.xlen(dlq) if redis_client.exists(dlq) else 0, "the dead letter")
        ((_id, entry),) = redis_client.xrange(dlq)
        assert (entry["source_id"], entry["reason"]) == (first, "max_deliveries_exceeded")
        # Every delivery claimed the faces and released them when its upsert failed.
        assert list(redis_client.scan_iter("dedup:t:demo:owner:*")) == []

        index.ensure_collection(512)  # the collection is back; the same image is ingested again
        again = publish(make_message("demo", SHA, FACES))
        wait_for(lambda: index.count("demo") == 2, "the image's two faces indexed")
        wait_for(lambda: counters(redis_client)["worker_msgs_acked"] == 1, f"{again} acked")
    assert counters(redis_client)["faces_dup_skipped"] == 0
    assert counters(redis_client)["faces_processed"] == 2
    for _face_index, phash, _seed in FACES:  # confirmed: the indexed faces suppress duplicates now
        assert redis_client.get(f"dedup:t:demo:owner:{phash}") == f"{SHA}:{_face_index}:{again}"


@pytest.mark.parametrize("fate", ["confirmed", "released"])
def test_a_face_near_a_face_another_indexer_is_indexing_waits_for_its_fate(
    fate: str,
    settings: Settings,
    make_message: Callable[..., dict[str, Any]],
    publish: Callable[[dict[str, Any]], str],
    redis_client: redis.Redis,
    index: VectorIndex,
) -> None:
    retried = transient_retries()
    other = DedupCache(redis_client, settings)
    claimed = [("demo", [(FACES[0][1], OTHER_INDEXER)])]
    assert not other.check_and_claim_batch(claimed)[0][0].pending
    with indexer_thread(settings, index, redis_client):
        entry = publish(make_message("demo", SHA, [(0, "8f373c9c3c9c3c1f", 1)]))  # 1 bit away
        # It is retried (a transient wait), neither skipped nor indexed, while the claim stands.
        wait_for(lambda: pending(redis_client, settings) == 1, "the message to be read")
        wait_for(lambda: transient_retries() >= retried + 2, "two retries of the message")
        assert index.count("demo") == 0
        assert counters(redis_client)["worker_msgs_acked"] == 0
        if fate == "confirmed":  # the other face is indexed: this one is its duplicate
            assert other.confirm(claimed) == 1
        else:  # the other message failed: this face is new
            assert other.release(claimed) == 1
        wait_for(lambda: counters(redis_client)["worker_msgs_acked"] == 1, f"{entry} acked")
    result = counters(redis_client)
    if fate == "confirmed":
        assert (index.count("demo"), result["faces_dup_skipped"], result["faces_processed"]) == (0, 1, 0)
    else:
        assert (index.count("demo"), result["faces_dup_skipped"], result["faces_processed"]) == (1, 0, 1)
