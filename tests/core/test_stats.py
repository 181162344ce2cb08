"""Cluster-wide stats in Redis: several processes add to one view with the Phase 3 /stats shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import redis
from prometheus_client import REGISTRY

from facepipe.core.errors import PermanentError
from facepipe.core.metrics import timed
from facepipe.core.stats import Stats

RUNBOOK_COUNTERS = {
    "faces_processed",
    "faces_rejected",
    "faces_dup_skipped",
    "worker_msgs_acked",
    "worker_msgs_dlq",
}
RUNBOOK_TIMINGS = {"detection", "embedding", "storage", "upsert"}

# One replica's work: run in two separate processes at once.
_REPLICA = """
import sys
import redis
from facepipe.core.stats import Stats
stats = Stats(redis.Redis.from_url(sys.argv[1]))
for _ in range(50):
    stats.incr("faces_processed", 2, tenant="acme")
    stats.incr("worker_msgs_acked")
    stats.record_timing("detection", 10.0)
    stats.record_timing("embedding", 12.0, count=4, tenant="acme")
stats.incr("faces_dup_skipped", 3)
"""


def _assert_runbook_shape(snapshot: dict) -> None:
    assert set(snapshot) == {"counters", "timings_ms"}
    assert set(snapshot["counters"]) == RUNBOOK_COUNTERS
    assert all(isinstance(v, int) for v in snapshot["counters"].values())
    assert set(snapshot["timings_ms"]) == RUNBOOK_TIMINGS
    for timing in snapshot["timings_ms"].values():
        assert set(timing) == {"count", "total", "avg"}
    json.dumps(snapshot)


def test_empty_snapshot_has_every_counter_and_timing_at_zero(redis_client: redis.Redis) -> None:
    snapshot = Stats(redis_client).snapshot()
    _assert_runbook_shape(snapshot)
    assert set(snapshot["counters"].values()) == {0}
    assert all(t == {"count": 0, "total": 0.0, "avg": 0.0} for t in snapshot["timings_ms"].values())


def test_two_processes_add_to_one_cluster_wide_view(redis_url: str, redis_client: redis.Redis) -> None:
    replicas = [subprocess.Popen([sys.executable, "-c", _REPLICA, redis_url]) for _ in range(2)]
    assert [replica.wait(timeout=120) for replica in replicas] == [0, 0]
    stats = Stats(redis_client)
    snapshot = stats.snapshot()
    _assert_runbook_shape(snapshot)
    assert snapshot["counters"] == {
        "faces_processed": 200,
        "faces_rejected": 0,
        "faces_dup_skipped": 6,
        "worker_msgs_acked": 100,
        "worker_msgs_dlq": 0,
    }
    assert snapshot["timings_ms"]["detection"] == {"count": 100, "total": 1000.0, "avg": 10.0}
    assert snapshot["timings_ms"]["embedding"] == {"count": 400, "total": 1200.0, "avg": 3.0}
    tenant = stats.snapshot("acme")
    _assert_runbook_shape(tenant)
    assert tenant["counters"]["faces_processed"] == 200
    assert tenant["counters"]["worker_msgs_acked"] == 0  # not attributed to the tenant
    assert tenant["timings_ms"]["embedding"]["count"] == 400
    assert tenant["timings_ms"]["detection"]["count"] == 0
    assert stats.snapshot("other")["counters"]["faces_processed"] == 0
    assert redis_client.hget("stats:counters", "faces_processed") == "200"
    assert redis_client.hget("stats:tenant:acme:counters", "faces_processed") == "200"


def test_writes_on_a_pipeline_land_only_when_it_executes(redis_client: redis.Redis) -> None:
    stats = Stats(redis_client)
    pipe = redis_client.pipeline(transaction=True)
    stats.incr("worker_msgs_dlq", tenant="acme", pipeline=pipe)
    stats.record_timing("upsert", 5.0, pipeline=pipe)
    assert stats.snapshot()["counters"]["worker_msgs_dlq"] == 0
    pipe.execute()
    assert stats.snapshot()["counters"]["worker_msgs_dlq"] == 1
    assert stats.snapshot("acme")["counters"]["worker_msgs_dlq"] == 1
    assert stats.snapshot()["timings_ms"]["upsert"]["count"] == 1
    discarded = redis_client.pipeline(transaction=True)
    stats.incr("worker_msgs_dlq", pipeline=discarded)
    discarded.reset()
    assert stats.snapshot()["counters"]["worker_msgs_dlq"] == 1


def test_bad_names_and_tenants_are_refused(redis_client: redis.Redis) -> None:
    stats = Stats(redis_client)
    with pytest.raises(ValueError, match="unknown counter"):
        stats.incr("faces_procesed")
    with pytest.raises(ValueError):
        stats.incr("faces_processed", -1)
    with pytest.raises(PermanentError):
        stats.incr("faces_processed", tenant="a:b")
    with pytest.raises(PermanentError):
        stats.snapshot("*")
    with pytest.raises(ValueError):
        stats.record_timing("detection:x", 1.0)
    assert redis_client.keys("*") == []


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_writes_are_mirrored_into_prometheus(redis_client: redis.Redis) -> None:
    stats = Stats(redis_client, stage="indexer")
    before = (
        _sample("facepipe_faces_rejected_total", reason="blur"),
        _sample("facepipe_faces_dup_skipped_total"),
        _sample("facepipe_stage_duration_seconds_count", stage="storage"),
    )
    stats.incr("faces_processed", 3)
    stats.incr("faces_rejected", 2, reason="blur")
    stats.incr("faces_dup_skipped")
    with timed(stats, "storage", tenant="acme"):
        pass
    after = (
        _sample("facepipe_faces_rejected_total", reason="blur"),
        _sample("facepipe_faces_dup_skipped_total"),
        _sample("facepipe_stage_duration_seconds_count", stage="storage"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    assert stats.snapshot("acme")["timings_ms"]["storage"]["count"] == 1


def test_writes_queued_on_a_pipeline_move_prometheus_only_when_the_caller_says_they_ran(
    redis_client: redis.Redis,
) -> None:
    stats = Stats(redis_client, stage="detector")
    before = _sample("facepipe_faces_rejected_total", reason="blurry")
    pipe = redis_client.pipeline(transaction=True)
    stats.incr("faces_rejected", 2, "acme", pipeline=pipe, reason="blurry")
    pipe.reset()  # the MULTI never ran: nothing moves anywhere
    assert stats.snapshot()["counters"]["faces_rejected"] == 0
    assert _sample("facepipe_faces_rejected_total", reason="blurry") == before
    pipe = redis_client.pipeline(transaction=True)
    stats.incr("faces_rejected", 2, "acme", pipeline=pipe, reason="blurry")
    pipe.execute()
    stats.mirror("faces_rejected", 2, "blurry")
    assert stats.snapshot("acme")["counters"]["faces_rejected"] == 2
    assert _sample("facepipe_faces_rejected_total", reason="blurry") == before + 2


def test_timed_records_nothing_when_the_block_fails(redis_client: redis.Redis) -> None:
    stats = Stats(redis_client)
    before = _sample("facepipe_stage_duration_seconds_count", stage="upsert")
    with pytest.raises(RuntimeError), timed(stats, "upsert"):
        raise RuntimeError("qdrant said no")
    assert stats.snapshot()["timings_ms"]["upsert"]["count"] == 0
    assert _sample("facepipe_stage_duration_seconds_count", stage="upsert") == before
    with timed(None, "upsert"):  # without Stats: the histogram only
        pass
    assert _sample("facepipe_stage_duration_seconds_count", stage="upsert") == before + 1
