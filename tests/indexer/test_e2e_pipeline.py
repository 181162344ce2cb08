"""detector → embedder → indexer over real streams, with the real buffalo_sc models and real photos.

Real redis-server, SeaweedFS and the embedded store (Qdrant Edge); the photos of
../shared/data/faces and their MANIFEST. Each stage runs the shared worker runtime in this
process (one batch, ``--once``), with the session's loaded models handed to its handler so
they are loaded only once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from facepipe.core.settings import Settings, load_settings
from facepipe.core.stats import Stats
from facepipe.core.worker import Worker
from facepipe.detector.handler import DetectorHandler
from facepipe.embedder.handler import EmbedderHandler
from facepipe.indexer import IndexerHandler
from facepipe.store.storage import ObjectStore, image_prefix
from facepipe.store.vectors import VectorIndex
from facepipe.vision.imaging import ImageLimits, align_face, decode_image

TENANT = "e2e"
TTL_SECONDS = 10

pytestmark = pytest.mark.slow


@pytest.fixture
def pipeline_env(
    base_env: dict[str, str], models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    values = {
        **base_env,
        "MODEL_PACK": "buffalo_sc",
        "MODELS_DIR": str(models_dir),
        "INFERENCE_DEVICE": "cpu",
        "ORT_INTRA_OP_THREADS": "1",
        "READ_BLOCK_MS": "200",
        "WORKER_BATCH_SIZE": "16",
        "DEDUP_TTL_SECONDS": str(TTL_SECONDS),
        # The MANIFEST counts detections; one face of obama_and_biden.jpg is in profile (pose ratio
        # ~9.5), which the default MAX_POSE_RATIO=3 rejects. Quality gates are tested in tests/vision;
        # here every detected face must reach the index.
        "MAX_POSE_RATIO": "100",
        "REDIS_CONSUMER_NAME": "e2e",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


class Pipeline:
    """The three stages over one Redis, S3 and Qdrant folder; photos published as the CLI's ingest does."""

    def __init__(self, settings: Settings, models: Any, photos: dict[str, Path], client: redis.Redis) -> None:
        self.settings = settings
        self.models = models
        self.client = client
        self.store = ObjectStore(settings)
        self.store.ensure_buckets()
        self.photos: dict[str, tuple[str, str]] = {}  # name -> (sha256, raw key)
        for name, path in photos.items():
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            key = f"{image_prefix(TENANT, sha)}original{path.suffix.lower()}"
            self.store.put_bytes(settings.bucket_raw, key, data, "image/jpeg")
            self.photos[name] = (sha, key)

    def ingest_all(self) -> None:
        for name, (sha, key) in self.photos.items():
            message = {
                "image_sha256": sha,
                "bucket": self.settings.bucket_raw,
                "key": key,
                "tenant_id": TENANT,
                "site": "faces.test",
                "url": f"https://faces.test/{name}",
                "image_phash": None,
                "face_hints": None,
            }
            self.client.xadd(self.settings.ingest_stream, {"message": json.dumps(message)})

    def run(self) -> None:
        """Ingest every photo once more and run each stage over it, in pipeline order."""
        self.ingest_all()
        handlers = (
            DetectorHandler(self.settings, detector=self.models.detector),
            EmbedderHandler(self.settings, embedder=self.models.embedder),
            IndexerHandler(self.settings),
        )
        for handler in handlers:
            assert Worker(self.settings, handler, max_batch=16, once=True).run() == 0
        for stream in self.settings.pipeline_streams:
            assert self.client.xlen(f"{stream}:dlq") == 0, self.client.xrange(f"{stream}:dlq")
            assert self.client.xpending(stream, self.settings.redis_group_name)["pending"] == 0

    def counters(self) -> dict[str, int]:
        return Stats(self.client).snapshot()["counters"]


@pytest.fixture
def pipeline(
    pipeline_env: dict[str, str],
    buffalo_sc: Any,
    faces_manifest: dict[str, dict],
    faces_dir: Path,
    redis_client: redis.Redis,
) -> Iterator[Pipeline]:
    yield Pipeline(
        load_settings(), buffalo_sc, {name: faces_dir / name for name in faces_manifest}, redis_client
    )


def query_vector(models: Any, path: Path) -> np.ndarray:
    """The embedding of the (only) face of a photo, computed as ops-api's search does."""
    image = decode_image(path.read_bytes(), ImageLimits(50 << 20, 60_000_000, 16_384))
    detections = models.detector.detect(image)
    assert len(detections) == 1
    return models.embedder.embed([align_face(image, detections[0].kps)])[0]


def test_first_run_indexes_every_face_second_run_skips_them_all_until_the_ttl(
    pipeline: Pipeline,
    faces_manifest: dict[str, dict],
    faces_dir: Path,
) -> None:
    total_faces = sum(photo["faces"] for photo in faces_manifest.values())
    settings = pipeline.settings

    pipeline.run()
    first_done = time.monotonic()
    counters = pipeline.counters()
    assert (counters["faces_processed"], counters["faces_dup_skipped"]) == (total_faces, 0)
    assert counters["faces_rejected"] == 0
    assert counters["worker_msgs_acked"] == len(faces_manifest)

    pipeline.run()  # the Phase 3 "second run (same images)"
    assert time.monotonic() - first_done < TTL_SECONDS, "the second run took longer than the dedup TTL"
    counters = pipeline.counters()
    assert (counters["faces_processed"], counters["faces_dup_skipped"]) == (total_faces, total_faces)

    index = VectorIndex(settings)
    try:
        assert index.count(TENANT) == total_faces  # no new points
        hits = list(index.scroll(TENANT))
        for name, photo in faces_manifest.items():
            sha, _key = pipeline.photos[name]
            assert len([h for h in hits if h.payload["image_sha256"] == sha]) == photo["faces"], name
        for hit in hits:  # every artifact is where its point says
            for artifact in hit.payload["artifacts"].values():
                assert pipeline.store.exists(artifact["bucket"], artifact["key"]), artifact

        # Search with one photo of an identity: its other photos come before any other identity's.
        for identity, query_name in (("obama", "obama_1.jpg"), ("biden", "biden_1.jpg")):
            others = {
                pipeline.photos[n][0]
                for n, p in faces_manifest.items()
                if p["identity"] == identity and n != query_name
            }
            single = {
                pipeline.photos[n][0]: p["identity"] for n, p in faces_manifest.items() if p["identity"]
            }
            ranked = [
                h.payload["image_sha256"]
                for h in index.search(TENANT, query_vector(pipeline.models, faces_dir / query_name), top_k=20)
            ]
            ranked_single = [sha for sha in ranked if sha in single and sha != pipeline.photos[query_name][0]]
            assert set(ranked_single[: len(others)]) == others, (identity, ranked_single)
    finally:
        index.close()

    time.sleep(max(0.0, TTL_SECONDS - (time.monotonic() - first_done)) + 0.5)
    pipeline.run()  # after the TTL the faces are new again
    counters = pipeline.counters()
    assert (counters["faces_processed"], counters["faces_dup_skipped"]) == (2 * total_faces, total_faces)
    index = VectorIndex(settings)
    try:
        assert index.count(TENANT) == total_faces
    finally:
        index.close()


def test_with_dedup_disabled_nothing_is_skipped(
    pipeline: Pipeline,
    faces_manifest: dict[str, dict],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENABLE_GLOBAL_DEDUP", "false")
    pipeline.settings = load_settings()
    total_faces = sum(photo["faces"] for photo in faces_manifest.values())
    pipeline.run()
    pipeline.run()
    counters = pipeline.counters()
    assert (counters["faces_processed"], counters["faces_dup_skipped"]) == (2 * total_faces, 0)
    assert pipeline.client.keys("dedup:*") == []
    index = VectorIndex(pipeline.settings)
    try:
        assert index.count(TENANT) == total_faces
    finally:
        index.close()
