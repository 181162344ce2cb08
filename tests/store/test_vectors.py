"""VectorIndex on qdrant-client's embedded local mode (a fresh folder per test)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models as qm

from facepipe.cli.localservers import free_port, wait_for_port
from facepipe.core.errors import PermanentError
from facepipe.core.settings import Settings
from facepipe.store.vectors import KEYWORD_INDEXES, CollectionMismatchError, FacePoint, VectorIndex, point_id

DIM = 16


@pytest.fixture
def index(settings: Settings) -> Iterator[VectorIndex]:
    vectors = VectorIndex(settings)
    yield vectors
    vectors.close()


def unit(seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def face(tenant: str, sha: str, index: int, vector: np.ndarray, site: str = "example.com") -> FacePoint:
    return FacePoint(tenant, sha, index, vector, {"site": site, "phash": "0" * 16, "phash_prefix": "0000"})


def test_ensure_collection_is_idempotent(index: VectorIndex) -> None:
    assert not index.healthy()
    assert index.vector_size() is None
    assert index.ensure_collection(DIM) is True
    assert index.ensure_collection(DIM) is False
    assert index.healthy()
    assert index.vector_size() == DIM


@pytest.fixture
def server_index(settings: Settings, tmp_path: Path) -> Iterator[VectorIndex]:
    """VectorIndex against a server (the Qdrant REST stand-in, which reports payload indexes as a
    server does; qdrant-client's local mode accepts them but neither builds nor reports them)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "facepipe.sim.qdrant_rest", "--path", str(tmp_path), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(port, timeout=60, proc=proc)
        vectors = VectorIndex(settings.model_copy(update={"qdrant_url": f"http://127.0.0.1:{port}"}))
        yield vectors
        vectors.close()
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_keyword_payload_indexes_exist_wherever_the_store_builds_them(server_index: VectorIndex) -> None:
    assert {"tenant_id", "site", "phash_prefix", "image_sha256"} <= set(KEYWORD_INDEXES)
    assert server_index.ensure_collection(DIM) is True
    assert server_index.payload_indexes() == dict.fromkeys(KEYWORD_INDEXES, "keyword")
    # A collection made by someone else, without them: ensure_collection adds what is missing.
    name = server_index.collection
    server_index.client.delete_collection(name)
    params = qm.VectorParams(size=DIM, distance=qm.Distance.COSINE)
    server_index.client.create_collection(name, vectors_config=params)
    assert server_index.payload_indexes() == {}
    assert server_index.ensure_collection(DIM) is False
    assert server_index.payload_indexes() == dict.fromkeys(KEYWORD_INDEXES, "keyword")


def test_ensure_collection_with_another_dim_is_a_clear_error(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    with pytest.raises(CollectionMismatchError, match=r"holds 16-d .* produces 512-d"):
        index.ensure_collection(512)


def test_search_never_returns_another_tenants_point(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    shared = unit(1)
    # Tenant b holds the exact query vector; tenant a only something far from it.
    index.upsert(
        [face("b", "img-b", 0, shared), face("a", "img-a", 0, unit(2)), face("b", "img-b2", 0, unit(3))]
    )

    hits_a = index.search("a", shared, top_k=10)
    assert [hit.payload["tenant_id"] for hit in hits_a] == ["a"]
    assert hits_a[0].payload["image_sha256"] == "img-a"
    hits_b = index.search("b", shared, top_k=10)
    assert {hit.payload["tenant_id"] for hit in hits_b} == {"b"}
    assert hits_b[0].payload["image_sha256"] == "img-b"
    assert hits_b[0].score == pytest.approx(1.0, abs=1e-5)
    assert index.search("c", shared, top_k=10) == []
    with pytest.raises(PermanentError):
        index.search("*", shared)


def test_search_filters_by_site_within_the_tenant(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    index.upsert([face("a", "one", 0, unit(1), site="s1"), face("a", "two", 0, unit(1), site="s2")])
    hits = index.search("a", unit(1), top_k=5, site="s2")
    assert [hit.payload["image_sha256"] for hit in hits] == ["two"]


def test_upserting_the_same_face_again_overwrites_its_point(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    index.upsert([face("a", "img", 0, unit(1)), face("a", "img", 1, unit(2))])
    index.upsert([face("a", "img", 0, unit(4)), face("a", "img", 1, unit(5))])
    assert index.count("a") == 2
    best = index.search("a", unit(4), top_k=1)[0]
    assert best.id == point_id("a", "img", 0)
    assert best.score == pytest.approx(1.0, abs=1e-5)


def test_delete_image_and_delete_tenant(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    index.upsert(
        [
            face("a", "img1", 0, unit(1)),
            face("a", "img1", 1, unit(2)),
            face("a", "img2", 0, unit(3)),
            face("b", "img1", 0, unit(4)),  # same image id in another tenant: must survive
        ]
    )
    assert index.delete_image("a", "img1") == 2
    assert index.count("a") == 1
    assert index.count("b") == 1
    assert [hit.payload["image_sha256"] for hit in index.scroll("a")] == ["img2"]
    assert index.delete_image("a", "img1") == 0

    assert index.delete_tenant("a") == 1
    assert index.count("a") == 0
    assert index.count() == 1


def test_point_ids_are_deterministic_uuid5() -> None:
    first = point_id("demo", "abc", 0)
    assert first == point_id("demo", "abc", 0)
    assert uuid.UUID(first).version == 5
    # The namespace is fixed forever: this value must never change, or every face gets a new point.
    assert first == str(uuid.uuid5(uuid.UUID("6f1c6d1e-4f7a-5b52-9a51-3c0de7a1f0c3"), "demo\x1fabc\x1f0"))
    others = {point_id("demo", "abc", 1), point_id("demo2", "abc", 0), point_id("demo", "abd", 0)}
    assert first not in others and len(others) == 3
    # The separator keeps ("a1", "b") and ("a", "1b") apart.
    assert point_id("a1", "b", 0) != point_id("a", "1b", 0)


def test_local_mode_allows_one_process_per_path(index: VectorIndex, settings: Settings) -> None:
    index.ensure_collection(DIM)
    with pytest.raises(RuntimeError, match="already accessed"):
        VectorIndex(settings)
