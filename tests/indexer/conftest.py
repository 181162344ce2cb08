"""Indexer tests: hand-built embedded messages (valid per docs/design.md) through a real stream.

The embeddings are random unit vectors and the crops synthetic JPEGs: this level tests what the
indexer does with a message, not the models (tests/indexer/test_e2e_pipeline.py does both).
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for leftovers

from facepipe.core.packs import get_pack
from facepipe.core.settings import Settings, load_settings
from facepipe.core.worker import Worker
from facepipe.indexer import IndexerHandler
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex
from facepipe.vision.imaging import encode_jpeg

PACK = get_pack("buffalo_sc")


def unit_vector(seed: int, dim: int = PACK.dim) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=dim).astype("<f4")
    return vector / np.linalg.norm(vector)


def crop_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, 112, dtype=np.float32)
    img = np.stack([np.add.outer(gradient, gradient) / 2] * 3, axis=-1) + rng.normal(0, 20, (112, 112, 3))
    return encode_jpeg(np.clip(img, 0, 255).astype(np.uint8))


# A face of a hand-built message: (face index, pHash, seed of its embedding and crop).
FaceSpec = tuple[int, str, int]


def embedded_message(
    tenant: str,
    sha: str,
    faces: list[FaceSpec],
    *,
    rejected: int = 0,
    pack: str = PACK.name,
    dim: int = PACK.dim,
    site: str = "example.com",
    raw_key: str | None = None,
    raw_bucket: str = "raw-images",
) -> dict[str, Any]:
    return {
        "v": 1,
        "ingest": {
            "image_sha256": sha,
            "bucket": raw_bucket,
            "key": raw_key or f"{tenant}/{sha}.jpg",
            "tenant_id": tenant,
            "site": site,
            "url": f"https://{site}/{sha}.jpg",
            "image_phash": None,
            "face_hints": None,
        },
        "image": {"width": 640, "height": 480},
        "model": {
            "pack": pack,
            "detector": PACK.detector_file,
            "recognizer": PACK.recognizer_file,
            "dim": dim,
        },
        "faces": [
            {
                "index": index,
                "bbox": [10.0 + index, 20.0, 110.0, 140.0],
                "landmarks": [[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]],
                "det_score": 0.9,
                "quality": {"blur_var": 120.5, "pose_ratio": 1.1, "size": 100.0},
                "phash": phash,
                "crop_jpeg_b64": base64.b64encode(crop_jpeg(seed)).decode(),
                "embedding_b64": base64.b64encode(unit_vector(seed, dim).astype("<f4").tobytes()).decode(),
            }
            for index, phash, seed in faces
        ],
        "rejected": [{"index": len(faces) + i, "reason": "blurry"} for i in range(rejected)],
        "timings_ms": {"download": 1.0, "decode": 1.0, "detection": 5.0, "embedding": 3.0},
    }


@pytest.fixture
def make_message() -> Callable[..., dict[str, Any]]:
    """``make_message(tenant, sha, [(face index, phash, seed), ...], rejected=0, ...)``."""
    return embedded_message


@pytest.fixture
def vector_of() -> Callable[[int], np.ndarray]:
    """The embedding make_message gives a face of ``seed``."""
    return unit_vector


@pytest.fixture
def env(base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        **base_env,
        "READ_BLOCK_MS": "200",
        "MODEL_PACK": PACK.name,
        "REDIS_CONSUMER_NAME": "indexer-test",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    return load_settings()


@pytest.fixture
def publish(redis_client: redis.Redis, settings: Settings) -> Callable[[dict[str, Any]], str]:
    def xadd(payload: dict[str, Any]) -> str:
        return str(redis_client.xadd(settings.embedded_stream, {"message": json.dumps(payload)}))

    return xadd


@pytest.fixture
def run_indexer() -> Callable[..., int]:
    """Run the indexer worker in this process until the stream has nothing new (one batch per call)."""

    def run(settings: Settings, max_batch: int = 10) -> int:
        return Worker(settings, IndexerHandler(settings), max_batch=max_batch, once=True).run()

    return run


@pytest.fixture
def open_index() -> Iterator[Callable[[Settings], VectorIndex]]:
    """A VectorIndex to inspect the results (embedded store: open only while no worker holds the folder)."""
    opened: list[VectorIndex] = []

    def make(settings: Settings) -> VectorIndex:
        index = VectorIndex(settings)
        opened.append(index)
        return index

    yield make
    for index in opened:
        index.close()


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return ObjectStore(settings)
