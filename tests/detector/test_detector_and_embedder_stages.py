"""Detector and embedder stages over real Redis streams and a real SeaweedFS S3 server."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from imagekit import png_header_only
from PIL import Image
from prometheus_client import REGISTRY

from facepipe.core.messages import DetectedMessage, EmbeddedMessage
from facepipe.core.settings import Settings, dlq_stream, load_settings
from facepipe.core.worker import StreamMessage, Worker
from facepipe.detector.handler import DetectorHandler
from facepipe.embedder.handler import EmbedderHandler
from facepipe.store.storage import ObjectStore
from facepipe.vision.imaging import align_face

TENANT = "acme"
EMBED_BATCH = 4


@pytest.fixture
def env(base_env: dict[str, str], models_dir: Path) -> dict[str, str]:
    return {
        **base_env,
        "MODELS_DIR": str(models_dir),
        "MODEL_PACK": "buffalo_sc",
        "INFERENCE_DEVICE": "cpu",
        "ORT_INTRA_OP_THREADS": "1",
        "EMBED_BATCH_SIZE": str(EMBED_BATCH),
        "READ_BLOCK_MS": "200",
        "MAX_WORKER_CONCURRENCY": "3",
        "STREAM_RETENTION_MS": "3600000",  # the tests read the ingest entries after the stages ran
    }


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    ObjectStore(settings).ensure_buckets()
    return settings


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return ObjectStore(settings)


def ingest(client: redis.Redis, settings: Settings, key: str, **extra: object) -> str:
    payload = {"image_sha256": key.replace(".", "-").replace("/", "-"), "bucket": settings.bucket_raw,
               "key": key, "tenant_id": TENANT, "site": "example.org", "url": f"https://example.org/{key}",
               **extra}
    return client.xadd(settings.ingest_stream, {"message": json.dumps(payload)})


def run_once(settings: Settings, handler: object) -> None:
    assert Worker(settings, handler, max_batch=20, once=True).run() == 0


def stream_payloads(client: redis.Redis, stream: str) -> list[dict]:
    return [json.loads(fields["message"]) for _id, fields in client.xrange(stream)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_detector_then_embedder_one_message_per_image_with_unit_vectors(
    settings: Settings, store: ObjectStore, redis_client: redis.Redis, buffalo_sc, faces_dir: Path,
    faces_manifest: dict[str, dict], photos: dict[str, np.ndarray],
) -> None:
    for name in faces_manifest:
        store.put_bytes(settings.bucket_raw, f"{TENANT}/{name}", (faces_dir / name).read_bytes())
        ingest(redis_client, settings, f"{TENANT}/{name}")
    batches_before = metric("facepipe_embed_batch_size_count")
    faces_before = metric("facepipe_embed_batch_size_sum")

    run_once(settings, DetectorHandler(settings, detector=buffalo_sc.detector))
    detected = [DetectedMessage.model_validate(p)
                for p in stream_payloads(redis_client, settings.detected_stream)]
    assert len(detected) == len(faces_manifest)
    run_once(settings, EmbedderHandler(settings, embedder=buffalo_sc.embedder))
    embedded = [EmbeddedMessage.model_validate(p)
                for p in stream_payloads(redis_client, settings.embedded_stream)]

    assert sorted(m.ingest.key for m in embedded) == sorted(f"{TENANT}/{n}" for n in faces_manifest)
    # Each image carries the ingest entry it came in with (the dedup owner's event), end to end.
    ingest_ids = {entry_id for entry_id, _ in redis_client.xrange(settings.ingest_stream)}
    assert {m.source.id for m in embedded if m.source} == ingest_ids
    assert all(m.source and m.source.stream == settings.ingest_stream for m in embedded)
    assert redis_client.xlen(dlq_stream(settings.ingest_stream)) == 0
    assert redis_client.xlen(dlq_stream(settings.detected_stream)) == 0
    total_faces = 0
    for message in embedded:
        name = message.ingest.key.split("/", 1)[1]
        height, width = photos[name].shape[:2]
        assert (message.image.width, message.image.height) == (width, height)
        assert message.model.pack == "buffalo_sc" and message.model.dim == 512
        # Every detection is accounted for, accepted or rejected with a reason.
        assert len(message.faces) + len(message.rejected) == faces_manifest[name]["faces"]
        indices = sorted([f.index for f in message.faces] + [r.index for r in message.rejected])
        assert indices == list(range(faces_manifest[name]["faces"]))
        assert set(message.timings_ms) >= {"download", "decode", "detection", "embedding"}
        for face in message.faces:
            vector = np.frombuffer(base64.b64decode(face.embedding_b64), dtype="<f4")
            assert vector.shape == (512,)
            assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
            x1, y1, x2, y2 = face.bbox
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        total_faces += len(message.faces)
    assert total_faces >= 8

    # The vector that went through JPEG crops and streams is the face's own vector.
    by_name = {m.ingest.key.split("/", 1)[1]: m for m in embedded}
    det = buffalo_sc.detector.detect(photos["obama_1.jpg"])[0]
    direct = buffalo_sc.embedder.embed([align_face(photos["obama_1.jpg"], det.kps)])[0]
    streamed = np.frombuffer(base64.b64decode(by_name["obama_1.jpg"].faces[0].embedding_b64), dtype="<f4")
    assert float(direct @ streamed) > 0.99

    # Batches spanned messages: ceil(faces / EMBED_BATCH_SIZE) inference calls for all of them.
    assert metric("facepipe_embed_batch_size_count") - batches_before == math.ceil(total_faces / EMBED_BATCH)
    assert metric("facepipe_embed_batch_size_sum") - faces_before == total_faces
    assert int(redis_client.hget("stats:timings:detection", "count")) == len(faces_manifest)
    assert int(redis_client.hget("stats:timings:embedding", "count")) == total_faces


def test_bad_images_go_to_the_dlq_with_their_reason_and_the_worker_goes_on(
    settings: Settings, store: ObjectStore, redis_client: redis.Redis, buffalo_sc, faces_dir: Path,
) -> None:
    good = (faces_dir / "obama_2.jpg").read_bytes()
    objects = {
        "truncated.jpg": good[: len(good) // 2],
        "notes.jpg": b"these are meeting notes, saved with the wrong extension\n" * 20,
        "bomb.png": png_header_only(20_000, 20_000),
        "good.jpg": good,
    }
    for key, data in objects.items():
        store.put_bytes(settings.bucket_raw, key, data)
    expected = {
        ingest(redis_client, settings, "truncated.jpg"): "corrupt_image",
        ingest(redis_client, settings, "notes.jpg"): "not_an_image",
        ingest(redis_client, settings, "bomb.png"): "too_many_pixels",
        ingest(redis_client, settings, "never-uploaded.jpg"): "object_not_found",
        ingest(redis_client, settings, "good.jpg", tenant_id="../other"): "invalid_fields",
    }
    good_id = ingest(redis_client, settings, "good.jpg")

    run_once(settings, DetectorHandler(settings, detector=buffalo_sc.detector))

    dlq = redis_client.xrange(dlq_stream(settings.ingest_stream))
    dead = {fields["source_id"]: fields for _id, fields in dlq}
    assert {source: fields["reason"] for source, fields in dead.items()} == expected
    # Each DLQ entry keeps the original message, so nothing is lost.
    for source, fields in dead.items():
        ((_id, source_fields),) = redis_client.xrange(settings.ingest_stream, source, source)
        original = json.loads(source_fields["message"])
        assert json.loads(fields["payload"]) == original
    published = stream_payloads(redis_client, settings.detected_stream)
    assert [p["ingest"]["key"] for p in published] == ["good.jpg"]
    assert len(published[0]["faces"]) == 1
    # Everything was acked: nothing waits for a redelivery.
    assert redis_client.xpending(settings.ingest_stream, settings.redis_group_name)["pending"] == 0
    assert good_id not in dead


def test_face_hints_and_faceless_images(
    settings: Settings, store: ObjectStore, redis_client: redis.Redis, buffalo_sc, faces_dir: Path,
    photos: dict[str, np.ndarray],
) -> None:
    store.put_bytes(settings.bucket_raw, "group.jpg", (faces_dir / "obama_and_biden.jpg").read_bytes())
    everywhere = buffalo_sc.detector.detect(photos["obama_and_biden.jpg"])
    hint = [round(float(v)) for v in everywhere[1].bbox]
    ingest(redis_client, settings, "group.jpg", face_hints=[{"bbox": hint, "confidence": 0.9}])
    landscape = io.BytesIO()
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    Image.fromarray(np.dstack([gradient, gradient[::-1], np.full_like(gradient, 90)])).save(landscape, "PNG")
    store.put_bytes(settings.bucket_raw, "landscape.png", landscape.getvalue())
    ingest(redis_client, settings, "landscape.png")

    run_once(settings, DetectorHandler(settings, detector=buffalo_sc.detector))
    run_once(settings, EmbedderHandler(settings, embedder=buffalo_sc.embedder))

    by_key = {p["ingest"]["key"]: p for p in stream_payloads(redis_client, settings.embedded_stream)}
    assert set(by_key) == {"group.jpg", "landscape.png"}
    hinted = by_key["group.jpg"]
    assert len(hinted["faces"]) + len(hinted["rejected"]) == 1
    found = hinted["faces"][0]["bbox"]
    assert np.abs(np.array(found) - np.array(hint)).max() < 20
    assert by_key["landscape.png"]["faces"] == [] and by_key["landscape.png"]["rejected"] == []


def test_command_line_workers_run_the_two_stages(
    env: dict[str, str], settings: Settings, store: ObjectStore, redis_client: redis.Redis, faces_dir: Path,
) -> None:
    store.put_bytes(settings.bucket_raw, "two.jpg", (faces_dir / "two_people.jpg").read_bytes())
    ingest(redis_client, settings, "two.jpg")
    child_env = {**os.environ, **env}
    for module in ("facepipe.detector", "facepipe.embedder"):
        result = subprocess.run([sys.executable, "-m", module, "--once", "--max-batch", "5"], env=child_env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Worker started, waiting for messages..." in result.stderr
        assert "Successfully processed message" in result.stderr
    (payload,) = stream_payloads(redis_client, settings.embedded_stream)
    assert len(payload["faces"]) == 2
    assert payload["model"]["recognizer"] == "w600k_mbf.onnx"


def test_rejected_faces_are_counted_by_the_ack_once_however_often_the_image_is_processed(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis, buffalo_sc,
    faces_dir: Path,
) -> None:
    monkeypatch.setenv("MIN_FACE_SIZE", "4000")  # every face is too small: two rejections for two_people
    settings = load_settings()  # the fixture's environment, and that
    store = ObjectStore(settings)
    store.ensure_buckets()
    store.put_bytes(settings.bucket_raw, "two.jpg", (faces_dir / "two_people.jpg").read_bytes())
    entry_id = ingest(redis_client, settings, "two.jpg")
    before = metric("facepipe_faces_rejected_total", reason="face_too_small")
    handler = DetectorHandler(settings, detector=buffalo_sc.detector)
    handler.setup()
    try:
        fields = {"message": redis_client.xrange(settings.ingest_stream)[0][1]["message"]}
        message = StreamMessage(entry_id, settings.ingest_stream, json.loads(fields["message"]), fields, 1)
        # A delivery that processed the image and died before its ack: nothing may be counted.
        (outcome,) = handler.process_batch([message])
        assert outcome.counters == {"faces_rejected": {"face_too_small": 2}}
    finally:
        handler.close()
    assert redis_client.hget("stats:counters", "faces_rejected") is None
    assert metric("facepipe_faces_rejected_total", reason="face_too_small") == before

    run_once(settings, DetectorHandler(settings, detector=buffalo_sc.detector))  # the redelivery acks it
    assert redis_client.hget("stats:counters", "faces_rejected") == "2"
    assert redis_client.hget(f"stats:tenant:{TENANT}:counters", "faces_rejected") == "2"
    assert metric("facepipe_faces_rejected_total", reason="face_too_small") == before + 2


def test_the_embedder_waits_up_to_embed_max_wait_ms_for_a_full_batch_of_faces(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, store: ObjectStore, redis_client: redis.Redis,
    buffalo_sc, faces_dir: Path,
) -> None:
    names = ["obama_1.jpg", "obama_2.jpg", "biden_1.jpg", "biden_2.jpg"]  # one face each
    for name in names:
        store.put_bytes(settings.bucket_raw, name, (faces_dir / name).read_bytes())
        ingest(redis_client, settings, name)
    run_once(settings, DetectorHandler(settings, detector=buffalo_sc.detector))
    detected = [fields for _id, fields in redis_client.xrange(settings.detected_stream)]
    assert [len(json.loads(f["message"])["faces"]) for f in detected] == [1, 1, 1, 1]
    redis_client.delete(settings.detected_stream)  # published again below, one at a time

    monkeypatch.setenv("EMBED_MAX_WAIT_MS", "10000")  # the longest allowed: a loaded machine is slow
    settings = load_settings()
    batches_before = metric("facepipe_embed_batch_size_count")
    faces_before = metric("facepipe_embed_batch_size_sum")
    handler = EmbedderHandler(settings, embedder=buffalo_sc.embedder)
    worker = Worker(settings, handler, max_batch=20, once=True)
    redis_client.xadd(settings.detected_stream, detected[0])
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while not redis_client.xinfo_stream(settings.detected_stream)["groups"] or (
        redis_client.xpending(settings.detected_stream, settings.redis_group_name)["pending"] < 1
    ):
        assert time.monotonic() < deadline, "the embedder never read the first message"
        time.sleep(0.05)
    for fields in detected[1:]:  # they arrive while the embedder waits for a full batch
        redis_client.xadd(settings.detected_stream, fields)
    runner.join(timeout=120)
    assert not runner.is_alive()
    # One inference call for the four faces that came one by one (--once: one batch, then exit).
    assert metric("facepipe_embed_batch_size_count") - batches_before == 1
    assert metric("facepipe_embed_batch_size_sum") - faces_before == EMBED_BATCH == 4
    assert len(redis_client.xrange(settings.embedded_stream)) == 4
