"""deletionPolicy Purge and the streams: the tenant's queued messages and dead letters go too (real Redis)."""

from __future__ import annotations

import json

import redis

from facepipe.operator.stream_purge import SCAN_BATCH, entry_tenant, purge_streams


def _ingest(tenant: str, n: int) -> dict[str, str]:
    return {"message": json.dumps({"tenant_id": tenant, "image_sha256": f"{n:064x}"})}


def test_a_shared_stream_loses_only_the_tenants_entries(redis_url: str, redis_client: redis.Redis) -> None:
    """Explicitly named streams may hold other tenants' messages: those stay, with the group."""
    for n in range(SCAN_BATCH + 20):  # more than one scan batch
        redis_client.xadd("shared", _ingest("gone" if n % 3 else "kept", n))
    redis_client.xgroup_create("shared", "pipeline", id="0")
    redis_client.xadd("shared:detected", {"message": json.dumps({"v": 1, "ingest": {"tenant_id": "gone"}})})
    redis_client.xadd("shared:detected", {"data": json.dumps({"v": 1, "ingest": {"tenant_id": "kept"}})})
    redis_client.xadd("shared:dlq", {"reason": "invalid_json", "payload": json.dumps({"tenant_id": "gone"})})
    redis_client.xadd("shared:dlq", {"reason": "invalid_json", "payload": "{not json"})

    report = purge_streams(redis_url, ["shared", "shared:detected"], "gone", whole=False)

    kept = [entry_tenant(fields) for _, fields in redis_client.xrange("shared")]
    assert kept == ["kept"] * ((SCAN_BATCH + 20 + 2) // 3)
    assert [entry_tenant(f) for _, f in redis_client.xrange("shared:detected")] == ["kept"]
    assert [f["payload"] for _, f in redis_client.xrange("shared:dlq")] == ["{not json"]  # unknown: kept
    assert report.entries_deleted == (SCAN_BATCH + 20) - len(kept) + 2
    assert redis_client.xinfo_groups("shared")[0]["name"] == "pipeline"


def test_the_tenants_own_streams_go_whole(redis_url: str, redis_client: redis.Redis) -> None:
    own = ["face-processing-queue:{gone}", "face-processing-queue:{gone}:detected"]
    for stream in own:
        redis_client.xadd(stream, _ingest("gone", 1))
        redis_client.xadd(f"{stream}:dlq", {"payload": "{}"})
    redis_client.xadd("face-processing-queue:{kept}", _ingest("kept", 1))
    report = purge_streams(redis_url, own, "gone", whole=True)
    assert report.streams_deleted == 4
    assert redis_client.keys("*{gone}*") == []
    assert redis_client.exists("face-processing-queue:{kept}")
