"""Acked entries do not accumulate: workers trim their input stream (facepipe.core.worker.trimming).

Real redis-server, toy stages as real subprocesses. The memory test pushes 1,000 messages of
~9 kB (the size of a detected entry with one crop) through two chained stages and measures
Redis's memory half way and at the end.
"""

from __future__ import annotations

import json
import logging

import pytest
import redis

from facepipe.core.worker.trimming import StreamTrimmer

INGEST = "face-processing-queue"
SECOND = f"{INGEST}:out"  # the first toy's output, the second toy's input
LAST = f"{SECOND}:out"  # nobody consumes it: it keeps everything
GROUP = "pipeline"
BLOB = "x" * 9000  # a base64 crop is about this long


def _length(client: redis.Redis, stream: str) -> int:
    return int(client.xlen(stream)) if client.exists(stream) else 0


def test_finished_entries_are_trimmed_and_the_oldest_unfinished_one_bounds_the_trim(harness) -> None:
    done = harness.publish(harness.ingest_payload(1))
    crashed = harness.publish(harness.ingest_payload(2, action="crash"))
    after = [harness.publish(harness.ingest_payload(n)) for n in (3, 4)]
    result = harness.run("--once", CLAIM_IDLE_MS="60000")
    assert result.returncode == 0, result.stderr
    assert harness.out_sources() == [done, *after]
    # What came before the pending entry is gone; it and what follows stay until it is finished.
    assert [entry_id for entry_id, _ in harness.redis.xrange(INGEST)] == [crashed, *after]
    assert harness.pending() == 1

    dead_letter = harness.run("--once", CLAIM_IDLE_MS="100", MAX_DELIVERIES="1")
    assert dead_letter.returncode == 0, dead_letter.stderr
    harness.wait_until(lambda: _length(harness.redis, INGEST) == 0, what="the stream trimmed to nothing")
    assert [json.loads(f["payload"])["n"] for _id, f in harness.redis.xrange(f"{INGEST}:dlq")] == [2]


def test_lag_stays_exact_after_trimming(harness) -> None:
    ids = [harness.publish(harness.ingest_payload(n)) for n in range(4)]
    assert harness.run("--once").returncode == 0
    assert _length(harness.redis, INGEST) == 0
    (group,) = harness.redis.xinfo_groups(INGEST)
    assert group["lag"] == 0  # nil after XDEL-style deletions; KEDA's lagCount needs a number
    waiting = [harness.publish(harness.ingest_payload(n)) for n in range(4, 7)]
    (group,) = harness.redis.xinfo_groups(INGEST)
    assert (group["lag"], group["last-delivered-id"]) == (3, ids[-1])
    assert _length(harness.redis, INGEST) == len(waiting)  # the length is the backlog


def test_retention_keeps_finished_entries_that_long_then_trims_them(harness) -> None:
    ids = [harness.publish(harness.ingest_payload(n)) for n in range(3)]
    assert harness.run("--once", STREAM_RETENTION_MS="3600000").returncode == 0
    assert [entry_id for entry_id, _ in harness.redis.xrange(INGEST)] == ids  # kept for an hour
    worker = harness.start(STREAM_RETENTION_MS="400")
    harness.wait_until(lambda: _length(harness.redis, INGEST) == 0, what="the entries to age out")
    assert worker.terminate() == 0


def test_retention_of_minus_one_never_trims(harness) -> None:
    ids = [harness.publish(harness.ingest_payload(n)) for n in range(3)]
    assert harness.run("--once", STREAM_RETENTION_MS="-1").returncode == 0
    assert harness.out_sources() == ids
    assert [entry_id for entry_id, _ in harness.redis.xrange(INGEST)] == ids


def test_a_stream_without_a_consumer_group_is_never_trimmed(redis_client: redis.Redis) -> None:
    redis_client.xadd(INGEST, {"message": "{}"})
    trimmer = StreamTrimmer(redis_client, INGEST, 0, logging.getLogger("test"))
    assert trimmer.trim() == 0
    assert redis_client.xlen(INGEST) == 1


def test_every_group_keeps_what_it_still_needs(redis_client: redis.Redis) -> None:
    ids = [redis_client.xadd(INGEST, {"message": str(n)}) for n in range(5)]
    redis_client.xgroup_create(INGEST, GROUP, id="0")
    redis_client.xgroup_create(INGEST, "audit", id="0")
    redis_client.xreadgroup(GROUP, "a", {INGEST: ">"}, count=5)
    redis_client.xack(INGEST, GROUP, *ids)
    redis_client.xreadgroup("audit", "b", {INGEST: ">"}, count=2)
    redis_client.xack(INGEST, "audit", ids[0])  # audit: 1 acked, 1 pending, 3 unread
    trimmer = StreamTrimmer(redis_client, INGEST, 0, logging.getLogger("test"))
    assert trimmer.trim() == 1
    assert [entry_id for entry_id, _ in redis_client.xrange(INGEST)] == ids[1:]


@pytest.mark.slow
def test_redis_memory_does_not_grow_with_messages_processed(harness) -> None:
    """1,000 messages of ~9 kB through two chained stages: Redis holds what is in flight only."""
    first = harness.start(WORKER_BATCH_SIZE="20", REDIS_CONSUMER_NAME="stage-1")
    second = harness.start(WORKER_BATCH_SIZE="20", REDIS_CONSUMER_NAME="stage-2", TOY_INPUT_STREAM=SECOND)
    client = harness.redis

    def push(start: int, count: int) -> None:
        for chunk in range(start, start + count, 100):
            pipe = client.pipeline(transaction=False)
            for n in range(chunk, min(chunk + 100, start + count)):
                pipe.xadd(INGEST, {"message": json.dumps(harness.ingest_payload(n, blob=BLOB))})
            pipe.execute()
        harness.wait_until(
            lambda: _length(client, LAST) == count
            and _length(client, INGEST) == 0
            and _length(client, SECOND) == 0,
            timeout=300,
            what=f"{start + count} messages through both stages, their inputs trimmed",
        )
        client.delete(LAST)  # the pipeline's end (Qdrant, S3 in the real one) is not Redis's to keep

    def used_memory() -> int:
        """Redis's memory, less the toy's own bookkeeping (a few bytes per message, by design)."""
        client.execute_command("MEMORY", "PURGE")
        toy = sum(int(client.memory_usage(key) or 0) for key in client.scan_iter("toy:*"))
        return int(client.info("memory")["used_memory"]) - toy

    push(0, 500)
    half_way = used_memory()
    push(500, 500)
    at_the_end = used_memory()
    payload_bytes = 500 * len(BLOB) * 2  # what the second 500 messages left behind untrimmed (2 streams)
    growth = at_the_end - half_way
    print(f"\nRedis used_memory after 500 messages {half_way} B, after 1000 {at_the_end} B "
          f"(growth {growth} B; untrimmed the two streams would hold {payload_bytes} B more)")
    assert growth < payload_bytes / 20, (half_way, at_the_end)
    for stream in (INGEST, SECOND):
        assert int(client.memory_usage(stream) or 0) < 64 * 1024, stream  # an empty stream, not 9 MB
    assert first.terminate() == 0 and second.terminate() == 0
