"""`make worker-once` (`facepipe worker all --once`) against real Redis and SeaweedFS, no local stack:
the Phase 3 smoke test, publish-test then one batch per stage, ends with faces in Qdrant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from facepipe.core.settings import load_settings
from facepipe.core.stats import Stats
from facepipe.store.vectors import VectorIndex

pytestmark = pytest.mark.slow


def test_publish_test_then_worker_all_once_indexes_the_sample(
    base_env: dict[str, str], models_dir: Path, redis_client, refused_port: int
) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MINIO_", "QDRANT_", "BUCKET_"))
    }
    env.update(base_env)
    # Nothing answers there: the commands use the environment, not some local stack on :8001.
    env.update(
        {
            "FACEPIPE_API": f"http://127.0.0.1:{refused_port}",
            "MODELS_DIR": str(models_dir),
            "INFERENCE_DEVICE": "cpu",
            "ORT_INTRA_OP_THREADS": "1",
            "READ_BLOCK_MS": "300",
        }
    )
    cli = [sys.executable, "-m", "facepipe.cli"]
    published = subprocess.run([*cli, "publish-test"], env=env, capture_output=True, text=True, timeout=120)
    assert published.returncode == 0, published.stderr
    assert "✅ Published test message to stream 'face-processing-queue'" in published.stdout

    once = subprocess.run(
        [*cli, "worker", "all", "--once", "--max-batch", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]
    for stage in ("detector", "embedder", "indexer"):
        assert f"facepipe.worker.{stage} - Successfully processed message" in once.stderr, stage

    counters = Stats(redis_client).snapshot("demo")["counters"]
    assert counters["worker_msgs_acked"] == 1
    assert counters["faces_processed"] + counters["faces_rejected"] == 6  # t1.jpg: 6 faces
    settings = load_settings(qdrant_path=base_env["QDRANT_PATH"])
    index = VectorIndex(settings)
    try:
        assert index.count("demo") == counters["faces_processed"]
    finally:
        index.close()
