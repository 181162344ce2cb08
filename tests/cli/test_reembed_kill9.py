"""A backfill killed with -9 mid-way resumes where it stopped: no face missing, none doubled.

The backfill runs as a real process: first ``facepipe reembed`` (no stack answers, so it runs
in its own process, as the operator's Job does), killed with SIGKILL after two pages; then the
Job's own command, ``python -m facepipe.ops_api.reembed``. On the embedded store (Qdrant Edge:
the killed process's folder lock and WAL) and on a Qdrant server (the REST stand-in in its own
process). Real Redis, SeaweedFS and models.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from packkit import index_photos, qdrant_server

from facepipe.core.settings import Settings, load_settings
from facepipe.store.pack_migration import MigrationRecords, MigrationState
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex

pytestmark = pytest.mark.slow
TENANT = "demo"
SFACE = "opencv_yunet_sface"


@contextlib.contextmanager
def vector_store(kind: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """QDRANT_* of an embedded store, or of a Qdrant server (the stand-in) running meanwhile."""
    if kind == "edge":
        yield {"QDRANT_URL": "embedded", "QDRANT_PATH": str(tmp_path / "qdrant")}
        return
    with qdrant_server(tmp_path / "server") as url:
        yield {"QDRANT_URL": url}


def record(client: redis.Redis, settings: Settings) -> MigrationState | None:
    return MigrationRecords(client, settings.qdrant_collection).load(TENANT)


def point_ids(settings: Settings, collection: str) -> list[str]:
    index = VectorIndex(settings)
    try:
        return [hit.id for hit in index.view(collection).scroll(TENANT)]
    finally:
        index.close()


@pytest.mark.parametrize("kind", ["edge", "server"])
def test_a_backfill_killed_mid_way_resumes_with_no_face_missing_or_doubled(
    kind: str,
    tmp_path: Path,
    base_env: dict[str, str],
    models_dir: Path,
    buffalo_sc: Any,
    faces_dir: Path,
    redis_client: redis.Redis,
    refused_port: int,
) -> None:
    with vector_store(kind, tmp_path) as qdrant:
        mine = ("QDRANT_", "FACEPIPE_", "MODEL_PACK")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(mine)},
            **base_env,
            **qdrant,
            "MODELS_DIR": str(models_dir),
            "INFERENCE_DEVICE": "cpu",
            "ORT_INTRA_OP_THREADS": "1",
            "MAX_POSE_RATIO": "100",
            "FACEPIPE_API": f"http://127.0.0.1:{refused_port}",  # no local stack answers there
        }
        settings = load_settings(**{k.lower(): v for k, v in env.items() if k in base_env or k in qdrant})
        settings = settings.model_copy(update={"max_pose_ratio": 100.0, "models_dir": models_dir})
        store = ObjectStore(settings)
        store.ensure_buckets()
        index = VectorIndex(settings)
        photos = sorted(p for p in faces_dir.iterdir() if p.suffix in {".jpg", ".png"})
        index_photos(settings, buffalo_sc, photos, TENANT, client=redis_client, store=store, index=index)
        old = index.route(TENANT).collection
        new = f"{settings.qdrant_collection}_{SFACE}_v1"
        index.close()  # the embedded store admits one process: the backfill's
        before = point_ids(settings, old)
        assert len(before) == 11

        slow = ["--page", "2", "--batch", "2", "--max-faces-per-s", "2", "--quiet"]
        first = subprocess.Popen(
            [sys.executable, "-m", "facepipe.cli", "reembed", "--tenant", TENANT, "--pack", SFACE, *slow],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while not ((state := record(redis_client, settings)) and state.migrated > 3):
            assert first.poll() is None, first.stdout.read().decode() if first.stdout else ""
            assert time.monotonic() < deadline, "the backfill never got two pages done"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)

        killed = record(redis_client, settings)  # mid-way: before the switch
        assert killed is not None and killed.phase == "backfilling" and killed.offsets
        done = len(point_ids(settings, new))
        assert 4 <= done < len(before)
        job = ["--tenant", TENANT, "--pack", SFACE, "--settle-s", "1"]
        again = subprocess.run(
            [sys.executable, "-m", "facepipe.ops_api.reembed", *job],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        log = again.stdout + again.stderr
        assert f"resuming pack buffalo_sc -> {SFACE}" in log
        assert f"{len(before) - done} embedded now" in log  # what the killed run upserted is not done again

        after = point_ids(settings, new)
        assert len(after) == len(set(after)) == len(before) and set(after) == set(before)
        finished = record(redis_client, settings)
        assert finished is not None and (finished.active, finished.phase) == (SFACE, "complete")
        index = VectorIndex(settings)
        try:
            assert index.route(TENANT).collection == new and index.count(TENANT) == len(before)
        finally:
            index.close()
