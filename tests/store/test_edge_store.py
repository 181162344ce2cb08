"""What only the embedded store does: migration from qdrant-client's local mode, its lock, offline optimize.

Everything runs on the real engines: the old stores are written by qdrant-client's local
mode itself, the new ones are Qdrant Edge folders.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from vectorkit import DIM, unit

from facepipe.core.settings import Settings, load_settings
from facepipe.store.vectors import FacePoint, StoreInUseError, VectorIndex, point_id
from facepipe.store.vectors.edge_engine import EdgeStore, collection_dir_name, optimize_store
from facepipe.store.vectors.migrate import BACKUP_DIR, STAGING_DIR, MigrationError, migrate_local_store


def embedded(root: Path, collection: str = "faces_v1") -> Settings:
    return load_settings(qdrant_url="embedded", qdrant_path=root, qdrant_collection=collection)


def write_local_mode_store(root: Path, collections: dict[str, int]) -> dict[str, list[qm.ScoredPoint]]:
    """An old store written by qdrant-client's local mode, as face-pipeline wrote it; returns its answers."""
    client = QdrantClient(path=str(root))
    answers: dict[str, list[qm.ScoredPoint]] = {}
    try:
        for name, points in collections.items():
            client.create_collection(
                name, vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)
            )
            client.upsert(
                name,
                [
                    qm.PointStruct(
                        id=point_id(f"t{n % 3}", f"img{n}", 0),
                        vector=unit(n).tolist(),
                        payload={
                            "tenant_id": f"t{n % 3}",
                            "image_sha256": f"img{n}",
                            "face_index": 0,
                            "site": "x",
                        },
                    )
                    for n in range(points)
                ],
            )
            flt = qm.Filter(must=[qm.FieldCondition(key="tenant_id", match=qm.MatchValue(value="t1"))])
            answers[name] = client.query_points(
                name, query=unit(4).tolist(), query_filter=flt, limit=5
            ).points
    finally:
        client.close()
    return answers


def test_a_local_mode_store_is_migrated_on_first_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "qdrant"
    old_answers = write_local_mode_store(root, {"faces_v1": 40, "faces_opencv": 7})

    with caplog.at_level(logging.WARNING, logger="facepipe.store.vectors"):
        index = VectorIndex(embedded(root))
    try:
        assert index.embedded
        assert index.count() == 40
        assert {t: index.count(t) for t in ("t0", "t1", "t2")} == {"t0": 14, "t1": 13, "t2": 13}
        hits = index.search("t1", unit(4), top_k=5)
        assert [h.id for h in hits] == [str(p.id) for p in old_answers["faces_v1"]]
        assert [h.score for h in hits] == pytest.approx([p.score for p in old_answers["faces_v1"]], abs=1e-5)
        assert hits[0].payload == {"tenant_id": "t1", "image_sha256": "img4", "face_index": 0, "site": "x"}
        assert index.ensure_collection(DIM) is False  # the migrated collection is the collection
        assert index.payload_indexes()["tenant_id"] == "keyword"
    finally:
        index.close()
    assert "migrating 2 collection(s)" in caplog.text and "faces_v1 40 points" in caplog.text

    # Nothing was deleted: the old files are set aside, and the other collection came along.
    backup = root / BACKUP_DIR
    assert json.loads((backup / "meta.json").read_text())["collections"].keys() == {
        "faces_v1",
        "faces_opencv",
    }
    assert not (root / "meta.json").exists() and not (root / STAGING_DIR).exists()
    other = VectorIndex(embedded(root, "faces_opencv"))
    try:
        assert other.count() == 7
    finally:
        other.close()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="facepipe.store.vectors"):
        VectorIndex(embedded(root)).close()  # a second start migrates nothing
    assert "migrat" not in caplog.text
    assert not (root / f"{BACKUP_DIR}-2").exists()


def test_an_interrupted_migration_finishes_on_the_next_open(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    write_local_mode_store(root, {"faces_v1": 12, "faces_b": 5})
    # The first run got faces_b into Edge, then died while writing faces_v1.
    report = migrate_local_store(root)
    assert report is not None and report.points == {"faces_v1": 12, "faces_b": 5}
    backup = root / BACKUP_DIR
    for entry in backup.iterdir():
        entry.rename(root / entry.name)
    backup.rmdir()
    EdgeStore(root, migrate=False).drop("faces_v1")
    (root / STAGING_DIR / "faces_v1" / "junk").mkdir(parents=True)

    report = migrate_local_store(root)
    assert report is not None
    assert report.points == {"faces_v1": 12} and report.skipped == ["faces_b"]
    index = VectorIndex(embedded(root))
    try:
        assert index.count() == 12
    finally:
        index.close()
    assert migrate_local_store(root) is None  # nothing left to do


def test_migration_refuses_what_face_pipeline_never_wrote_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    client = QdrantClient(path=str(root))
    client.create_collection(
        "faces_v1", vectors_config={"face": qm.VectorParams(size=4, distance=qm.Distance.DOT)}
    )
    client.close()
    with pytest.raises(MigrationError, match="named vectors"):
        VectorIndex(embedded(root))
    assert (root / "meta.json").is_file() and not (root / BACKUP_DIR).exists()
    VectorIndex(embedded(tmp_path / "other")).close()  # and the store's lock was released


def test_migration_waits_for_the_store_to_be_free(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    index = VectorIndex(embedded(root))
    try:
        with pytest.raises(StoreInUseError, match="this process"):
            migrate_local_store(root)
    finally:
        index.close()
    assert migrate_local_store(root) is None


def test_the_store_keeps_its_write_ahead_log_and_tenant_index(tmp_path: Path) -> None:
    index = VectorIndex(embedded(tmp_path / "qdrant"))
    try:
        index.ensure_collection(DIM)
        folder = tmp_path / "qdrant" / "edge" / "faces_v1"
        config = json.loads((folder / "edge_config.json").read_text())
        assert config.get("wal_enabled", True) is not False and (folder / "wal").is_dir()
        tenant_index = index.engine.payload_indexes()["tenant_id"]  # type: ignore[attr-defined]
        assert tenant_index[:2] == ("keyword", True)  # the tenant key: points grouped per tenant
    finally:
        index.close()


def test_offline_optimize_keeps_every_answer_and_refuses_a_served_store(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    index = VectorIndex(embedded(root))
    # Enough 512-d vectors (12 MB) for the optimizer to rebuild the segment with int8 copies.
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((6000, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:20] + rng.normal(0, 0.02, (20, 512)).astype(np.float32)
    try:
        index.ensure_collection(512)
        for start in range(0, len(vectors), 1000):
            index.upsert(
                [FacePoint(f"t{n % 2}", f"i{n}", 0, vectors[n], {}) for n in range(start, start + 1000)]
            )
        before = [[(h.id, round(h.score, 4)) for h in index.search("t1", q, top_k=10)] for q in queries]
        with pytest.raises(StoreInUseError):
            optimize_store(root)
    finally:
        index.close()

    assert optimize_store(root) == {"faces_v1": True}
    index = VectorIndex(embedded(root))
    try:
        assert index.count() == 6000
        # Quantised vectors are rescored with the originals: the same top-10, the same scores.
        assert [
            [(h.id, round(h.score, 4)) for h in index.search("t1", q, top_k=10)] for q in queries
        ] == before
    finally:
        index.close()


def test_opening_warms_the_store_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "qdrant"
    index = VectorIndex(embedded(root))
    index.ensure_collection(DIM)
    index.close()
    with caplog.at_level(logging.INFO, logger="facepipe.store.vectors"):
        VectorIndex(embedded(root)).close()
    assert "warmed up" in caplog.text


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".."])
def test_a_collection_name_must_be_one_plain_folder_name(name: str) -> None:
    with pytest.raises(ValueError, match="not usable"):
        collection_dir_name(name)


def test_facepipe_vectors_migrates_optimizes_and_refuses_a_held_store(tmp_path: Path) -> None:
    """`facepipe vectors migrate|optimize` (the CLI, services/cli) on a real store folder."""
    root = tmp_path / "qdrant"
    write_local_mode_store(root, {"faces_v1": 6})
    command = [sys.executable, "-m", "facepipe.cli", "vectors"]
    migrated = subprocess.run(
        [*command, "migrate", "--path", str(root)], capture_output=True, text=True, timeout=300
    )
    assert migrated.returncode == 0 and "migrated faces_v1 6 points" in migrated.stdout, migrated.stderr
    optimized = subprocess.run(
        [*command, "optimize", "--path", str(root)], capture_output=True, text=True, timeout=300
    )
    assert optimized.returncode == 0 and "faces_v1 already optimal" in optimized.stdout, optimized.stderr
    by_data_dir = subprocess.run(
        [*command, "optimize", "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert by_data_dir.returncode == 0 and str(root) in by_data_dir.stdout, by_data_dir.stderr
    index = VectorIndex(embedded(root))
    try:
        refused = subprocess.run(
            [*command, "optimize", "--path", str(root)], capture_output=True, text=True, timeout=300
        )
        assert refused.returncode == 1 and f"already open by process {os.getpid()}" in refused.stderr
        assert index.count() == 6
    finally:
        index.close()
