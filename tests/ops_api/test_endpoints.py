"""ops-api endpoints against real Redis and SeaweedFS: /ready, /stats, /metrics, /dlq, auth, errors."""

from __future__ import annotations

import json

import pytest
import redis
from fastapi.testclient import TestClient

from facepipe.core.errors import PermanentError
from facepipe.core.settings import Settings
from facepipe.core.worker import Outcome, StreamMessage, Worker
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex

from .conftest import AppFactory

INGEST = "face-processing-queue"


def _ingest_payload(n: int) -> dict:
    return {
        "image_sha256": f"img{n}",
        "bucket": "raw-images",
        "key": f"demo/{n}.jpg",
        "tenant_id": "demo",
        "site": "local",
        "url": f"http://example.com/{n}.jpg",
        "image_phash": None,
        "face_hints": None,
    }


class RejectEverything:
    """A real stage handler that dead-letters every well-formed message with reason ``object_not_found``."""

    name = "detector"
    required_fields = ("image_sha256", "bucket", "key", "tenant_id")

    def __init__(self, settings: Settings) -> None:
        self.input_stream = settings.ingest_stream

    def setup(self) -> None:
        pass

    def close(self) -> None:
        pass

    def process_batch(self, messages: list[StreamMessage]) -> list[Outcome | BaseException]:
        return [PermanentError("object_not_found", f"{m.payload['key']} does not exist") for m in messages]


def _dead_letter(settings: Settings, redis_client: redis.Redis, raw_payloads: list[str]) -> list[str]:
    """Publish the payloads and let a real Worker move them to the DLQ; returns the DLQ ids."""
    for raw in raw_payloads:
        redis_client.xadd(settings.ingest_stream, {"message": raw})
    Worker(settings, RejectEverything(settings), max_batch=len(raw_payloads), once=True).run()
    return [entry_id for entry_id, _ in redis_client.xrange(f"{settings.ingest_stream}:dlq")]


# --- /ready ------------------------------------------------------------------------------


def test_ready_is_503_until_buckets_and_collection_exist_then_200(
    client: TestClient, settings: Settings
) -> None:
    response = client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert set(body["checks"]) == {"models", "storage", "vector_db", "queue", "dedup_cache"}
    assert body["checks"]["storage"] == "unhealthy"
    assert settings.bucket_raw in body["errors"]["storage"]
    assert body["checks"]["vector_db"] == "unhealthy"
    assert body["checks"]["queue"] == "healthy"
    assert body["checks"]["dedup_cache"] == "healthy"

    ObjectStore(settings).ensure_buckets()
    backend = client.app.state.backend
    backend.index.ensure_collection(512)
    response = client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "ready": True,
        "checks": dict.fromkeys(body["checks"], "healthy"),
        "provider": "CPUExecutionProvider",
        "model_pack": "buffalo_sc",
    }


def test_ready_reports_missing_models_as_unhealthy(make_client: AppFactory, tmp_path) -> None:
    client = make_client(models_dir=tmp_path / "no-models")
    body = client.get("/ready").json()
    assert body["checks"]["models"] == "unhealthy"
    assert "make models" in body["errors"]["models"]
    assert body["provider"] is None


# --- /stats and /metrics -------------------------------------------------------------------


def test_stats_has_runbook_shape_and_stream_depth(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    for n in range(3):
        redis_client.xadd(INGEST, {"message": json.dumps(_ingest_payload(n))})
    redis_client.xgroup_create(INGEST, "pipeline", id="0")
    redis_client.xreadgroup("pipeline", "c1", {INGEST: ">"}, count=1)  # one delivered, not acked
    redis_client.xadd(f"{INGEST}:dlq", {"reason": "x", "payload": "{}"})
    redis_client.hset("stats:counters", mapping={"faces_processed": 7, "worker_msgs_dlq": 1})

    body = client.get("/stats").json()
    assert body["counters"] == {
        "faces_processed": 7,
        "faces_rejected": 0,
        "faces_dup_skipped": 0,
        "worker_msgs_acked": 0,
        "worker_msgs_dlq": 1,
    }
    assert set(body["timings_ms"]) == {"detection", "embedding", "storage", "upsert"}
    assert body["dedup_stats"] == {"keys": 0, "memory_bytes": 0}
    ingest = body["streams"][INGEST]
    assert (ingest["length"], ingest["dlq_length"]) == (3, 1)
    [group] = ingest["groups"]
    assert (group["name"], group["lag"], group["pending"], group["consumers"]) == ("pipeline", 2, 1, 1)
    assert body["streams"][settings.detected_stream]["length"] == 0


def test_stats_per_tenant_and_invalid_tenant(client: TestClient, redis_client: redis.Redis) -> None:
    redis_client.hset("stats:tenant:acme:counters", "faces_processed", 4)
    assert client.get("/stats", params={"tenant_id": "acme"}).json()["counters"]["faces_processed"] == 4
    response = client.get("/stats", params={"tenant_id": "a:b"})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_tenant_id"


def test_lag_is_counted_when_redis_reports_none(client: TestClient, redis_client: redis.Redis) -> None:
    """Redis 7 reports lag nil after an XDEL inside the undelivered range; then it is counted."""
    ids = [redis_client.xadd(INGEST, {"message": "{}"}) for _ in range(4)]
    redis_client.xgroup_create(INGEST, "pipeline", id="0")
    redis_client.xreadgroup("pipeline", "c1", {INGEST: ">"}, count=1)
    redis_client.xdel(INGEST, ids[2])
    [group] = client.get("/stats").json()["streams"][INGEST]["groups"]
    assert group["lag"] == 2  # ids[1] and ids[3]


def test_metrics_exposes_stream_gauges_for_every_pipeline_stream(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    for n in range(5):
        redis_client.xadd(settings.detected_stream, {"message": json.dumps({"n": n})})
    redis_client.xadd(f"{INGEST}:dlq", {"reason": "x", "payload": "{}"})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for role, stream in settings.streams_by_role.items():
        labels = f'stream="{stream}",stream_role="{role}"'
        assert f"facepipe_stream_length{{{labels}}}" in text
        assert f'facepipe_stream_lag{{group="pipeline",{labels}}}' in text
        assert f'facepipe_stream_pending{{group="pipeline",{labels}}}' in text
        assert f"facepipe_dlq_length{{{labels}}}" in text
    # No group yet on the detected stream: everything in it is lag (what the autoscaler must see).
    detected = f'stream="{settings.detected_stream}",stream_role="detected"'
    assert f"facepipe_stream_length{{{detected}}} 5.0" in text
    assert f'facepipe_stream_lag{{group="pipeline",{detected}}} 5.0' in text
    assert f'facepipe_dlq_length{{stream="{INGEST}",stream_role="ingest"}} 1.0' in text
    assert "facepipe_dedup_keys" in text


def test_metrics_name_each_streams_role_whatever_the_stream_is_called(
    make_client: AppFactory, redis_client: redis.Redis
) -> None:
    """Custom stream names keep their role label: the autoscalers and alerts select on it."""
    client = make_client(detected_stream_name="faces-found", embedded_stream_name="vectors-made")
    redis_client.xadd("faces-found", {"message": "{}"})
    text = client.get("/metrics").text
    assert 'facepipe_stream_length{stream="faces-found",stream_role="detected"} 1.0' in text
    assert 'facepipe_stream_lag{group="pipeline",stream="vectors-made",stream_role="embedded"} 0.0' in text


# --- /dlq ----------------------------------------------------------------------------------


def test_dlq_list_shows_reason_source_and_payload(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    valid = json.dumps(_ingest_payload(1))
    ids = _dead_letter(settings, redis_client, [valid, '{"invalid":"json'])
    assert len(ids) == 2

    body = client.get("/dlq").json()
    assert body["lengths"][INGEST] == 2
    by_reason = {entry["reason"]: entry for entry in body["entries"]}
    assert set(by_reason) == {"object_not_found", "invalid_json"}
    missing = by_reason["object_not_found"]
    assert missing["payload"]["image_sha256"] == "img1"
    assert missing["source_stream"] == INGEST
    assert missing["delivery_count"] == 1
    assert "demo/1.jpg" in missing["error"]
    broken = by_reason["invalid_json"]
    assert broken["payload"] is None and broken["payload_raw"] == '{"invalid":"json'

    only_first = client.get("/dlq", params={"stream": INGEST, "count": 1}).json()["entries"]
    assert [e["id"] for e in only_first] == ids[:1]
    after_first = client.get("/dlq", params={"after": ids[0]}).json()["entries"]
    assert [e["id"] for e in after_first] == ids[1:]


def test_dlq_bad_input_is_a_clear_400(client: TestClient) -> None:
    for params, error in [
        ({"stream": "other-stream"}, "unknown_stream"),
        ({"after": "yesterday"}, "invalid_id"),
    ]:
        response = client.get("/dlq", params=params)
        assert response.status_code == 400
        assert response.json()["error"] == error
    response = client.get("/dlq", params={"count": 0})
    assert response.status_code == 422
    assert "count" in response.json()["message"]


def test_dlq_replay_selected_then_all(
    client: TestClient, settings: Settings, redis_client: redis.Redis
) -> None:
    payloads = [json.dumps(_ingest_payload(n)) for n in range(3)]
    ids = _dead_letter(settings, redis_client, payloads)
    before = redis_client.xlen(INGEST)

    response = client.post("/dlq/replay", json={"stream": INGEST, "ids": [ids[1], "1-1"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["replayed"]) == [ids[1]] and body["missing"] == ["1-1"]
    assert [i for i, _ in redis_client.xrange(f"{INGEST}:dlq")] == [ids[0], ids[2]]
    new_id = body["replayed"][ids[1]]
    [(_, fields)] = redis_client.xrange(INGEST, min=new_id, max=new_id)
    assert fields == {"message": payloads[1]}  # the original payload, byte for byte

    # Replaying the same id again finds nothing: never published twice.
    again = client.post("/dlq/replay", json={"stream": f"{INGEST}:dlq", "ids": [ids[1]]}).json()
    assert again["replayed"] == {} and again["missing"] == [ids[1]]

    everything = client.post("/dlq/replay", json={"stream": INGEST, "all": True}).json()
    assert sorted(everything["replayed"]) == [ids[0], ids[2]]
    assert redis_client.xlen(f"{INGEST}:dlq") == 0
    assert redis_client.xlen(INGEST) == before + 3


def test_dlq_replay_bad_input(client: TestClient) -> None:
    cases = [
        ({"stream": INGEST}, 400, "nothing_selected"),
        ({"stream": "elsewhere", "all": True}, 400, "unknown_stream"),
        ({"stream": INGEST, "ids": ["0-0'; DROP"]}, 400, "invalid_id"),
        ({"ids": ["1-0"]}, 422, "invalid_request"),
    ]
    for body, status, error in cases:
        response = client.post("/dlq/replay", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"] == error
        assert response.json()["message"]


# --- auth ----------------------------------------------------------------------------------


def test_mutating_endpoints_need_the_bearer_token(
    make_client: AppFactory, settings: Settings, redis_client: redis.Redis
) -> None:
    client = make_client(ops_api_token="s3cret")
    ids = _dead_letter(settings, redis_client, [json.dumps(_ingest_payload(1))])
    calls = [
        ("POST", "/dlq/replay", {"json": {"stream": INGEST, "all": True}}),
        ("DELETE", "/images/abc", {"params": {"tenant_id": "demo"}}),
        ("DELETE", "/tenants/demo", {}),
    ]
    for method, path, kwargs in calls:
        missing = client.request(method, path, **kwargs)
        assert missing.status_code == 401, path
        assert missing.json()["error"] == "unauthorized"
        assert "Bearer" in missing.headers["www-authenticate"]
        wrong = client.request(method, path, headers={"Authorization": "Bearer nope"}, **kwargs)
        assert wrong.status_code == 403, path
        assert "OPS_API_TOKEN" in wrong.json()["message"]
    assert redis_client.xlen(f"{INGEST}:dlq") == 1  # nothing happened without the token

    ok = client.post(
        "/dlq/replay", json={"stream": INGEST, "all": True}, headers={"Authorization": "Bearer s3cret"}
    )
    assert ok.status_code == 200
    assert list(ok.json()["replayed"]) == ids
    # Reading stays open: the token guards only what changes data.
    assert client.get("/stats").status_code == 200
    assert client.get("/dlq").status_code == 200


# --- misc ----------------------------------------------------------------------------------


def test_openapi_docs_and_unknown_paths(client: TestClient) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/ready",
        "/stats",
        "/metrics",
        "/search",
        "/dlq",
        "/dlq/replay",
        "/images/{image_sha256}",
        "/tenants/{tenant_id}",
    ):
        assert path in paths
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not_found", "message": "Not Found", "status": 404}
    assert client.get("/local").status_code == 404  # not started by `facepipe up`


def test_local_endpoint_serves_what_facepipe_up_set(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "FACEPIPE_LOCAL_INFO", json.dumps({"mode": "local", "settings": {"redis_url": "redis://x"}})
    )
    assert client.get("/local").json()["settings"]["redis_url"] == "redis://x"


def test_local_endpoint_hands_out_credentials_only_with_the_token(
    make_client: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = {"mode": "local", "settings": {"redis_url": "redis://x", "minio_secret_key": "hush"}}
    monkeypatch.setenv("FACEPIPE_LOCAL_INFO", json.dumps(secret))
    client = make_client(ops_api_token="s3cret")
    missing = client.get("/local")
    assert (missing.status_code, missing.json()["error"]) == (401, "unauthorized")
    assert "hush" not in missing.text
    wrong = client.get("/local", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["error"]) == (403, "forbidden")
    right = client.get("/local", headers={"Authorization": "Bearer s3cret"})
    assert right.json()["settings"]["minio_secret_key"] == "hush"


def test_vector_index_is_shared_when_injected(settings: Settings) -> None:
    from facepipe.ops_api.backend import OpsBackend

    index = VectorIndex(settings)
    try:
        backend = OpsBackend(settings, index=index)
        assert backend.index is index
        backend.close()
        assert index.count() == 0  # the backend does not close an index it does not own
    finally:
        index.close()
