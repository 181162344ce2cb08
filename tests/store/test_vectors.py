"""The vector index contract, run against every backend (tests/store/vectorkit.py).

The same tests pass on the embedded store (Qdrant Edge), on the server backend over
qdrant-client's local mode, and on the server backend over HTTP against the Qdrant REST
stand-in (Qdrant Edge behind Qdrant's REST API). Where a backend cannot show a property
(local mode keeps no payload indexes; a server admits many clients), the test says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrantkit import rest_stand_in
from vectorkit import DIM, FACES_PER_BATCH, KINDS, Backend, Holder, make_backend, unit

from facepipe.core.errors import PermanentError
from facepipe.store.vectors import (
    KEYWORD_INDEXES,
    CollectionMismatchError,
    FacePoint,
    VectorIndex,
    point_id,
)


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "server-rest":
        with rest_stand_in(tmp_path / "stand-in") as url:
            yield make_backend("server-rest", tmp_path, url)
    else:
        yield make_backend(request.param, tmp_path)


@pytest.fixture
def index(backend: Backend) -> Iterator[VectorIndex]:
    vectors = backend.open()
    yield vectors
    vectors.close()


def face(tenant: str, sha: str, number: int, vector: np.ndarray, site: str = "example.com") -> FacePoint:
    return FacePoint(tenant, sha, number, vector, {"site": site, "phash": "0" * 16, "phash_prefix": "0000"})


def test_ensure_collection_is_idempotent_with_keyword_indexes(index: VectorIndex, backend: Backend) -> None:
    assert not index.healthy()
    assert index.vector_size() is None
    assert index.count() == 0
    assert index.ensure_collection(DIM) is True
    assert index.ensure_collection(DIM) is False
    assert index.healthy()
    assert index.vector_size() == DIM
    indexes = index.payload_indexes()
    if backend.keeps_indexes:
        assert {name: indexes.get(name) for name in KEYWORD_INDEXES} == dict.fromkeys(
            KEYWORD_INDEXES, "keyword"
        )
    else:
        # qdrant-client's local mode accepts payload indexes but neither builds nor reports them.
        assert indexes == {}


def test_ensure_collection_with_another_dim_is_a_clear_error(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    with pytest.raises(CollectionMismatchError, match=r"holds 16-d cosine .* produces 512-d"):
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


def test_search_is_ranked_and_honours_top_k_site_and_score_threshold(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    query = unit(1)
    # Vectors at known similarities to the query: q + k * noise, normalised.
    noise = unit(99)
    noise = noise - float(noise @ query) * query
    noise /= np.linalg.norm(noise)
    similar = {
        n: (query + w * noise) / np.linalg.norm(query + w * noise) for n, w in enumerate((0.1, 0.5, 1.0, 3.0))
    }
    index.upsert([face("a", f"img{n}", 0, v, site="s1" if n % 2 == 0 else "s2") for n, v in similar.items()])
    expected = {f"img{n}": float(v @ query) for n, v in similar.items()}

    hits = index.search("a", query, top_k=10)
    assert [hit.payload["image_sha256"] for hit in hits] == ["img0", "img1", "img2", "img3"]
    for hit in hits:
        assert hit.score == pytest.approx(expected[hit.payload["image_sha256"]], abs=1e-4)
    assert [hit.payload["image_sha256"] for hit in index.search("a", query, top_k=2)] == ["img0", "img1"]
    assert [hit.payload["image_sha256"] for hit in index.search("a", query, site="s2")] == ["img1", "img3"]
    threshold = (expected["img1"] + expected["img2"]) / 2
    assert [hit.payload["image_sha256"] for hit in index.search("a", query, score_threshold=threshold)] == [
        "img0",
        "img1",
    ]


def test_upserting_the_same_face_again_overwrites_its_point(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    index.upsert([face("a", "img", 0, unit(1)), face("a", "img", 1, unit(2))])
    index.upsert([face("a", "img", 0, unit(4)), face("a", "img", 1, unit(5))])
    assert index.count("a") == 2
    best = index.search("a", unit(4), top_k=1)[0]
    assert best.id == point_id("a", "img", 0)
    assert best.score == pytest.approx(1.0, abs=1e-5)
    assert index.search("a", unit(1), top_k=1)[0].score < 0.99  # the old vector is gone


def test_a_vector_that_is_not_finite_is_refused_before_the_store(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    bad = unit(1).copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        index.upsert([face("a", "img", 0, unit(2)), face("a", "img", 1, bad)])
    assert index.count("a") == 0  # the batch is refused whole


def test_delete_image_and_delete_tenant_return_counts(index: VectorIndex) -> None:
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
    assert index.search("b", unit(4))[0].payload["image_sha256"] == "img1"


def test_scroll_pages_through_a_tenant_with_vectors_for_a_backfill(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    vectors = {n: unit(n) for n in range(23)}
    index.upsert([face("a", f"img{n:02d}", 0, v) for n, v in vectors.items()])
    index.upsert([face("b", "other", 0, unit(100))])

    hits = list(index.scroll("a", batch=5, with_vectors=True))
    assert len(hits) == 23 and len({hit.id for hit in hits}) == 23
    assert [hit.id for hit in hits] == sorted(hit.id for hit in hits)  # point id order, pages joined
    for hit in hits:
        number = int(hit.payload["image_sha256"][3:])
        assert hit.id == point_id("a", f"img{number:02d}", 0)
        assert hit.vector is not None
        np.testing.assert_allclose(hit.vector, vectors[number], atol=1e-5)
    without = list(index.scroll("a", batch=100))
    assert [hit.id for hit in without] == [hit.id for hit in hits]
    assert all(hit.vector is None for hit in without)
    assert [hit.payload["face_index"] for hit in index.scroll("a", image_sha256="img07")] == [0]


def test_counts_per_tenant(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    index.upsert([face(tenant, f"i{n}", 0, unit(n)) for n, tenant in enumerate("aabbbc")])
    assert {tenant: index.count(tenant) for tenant in "abcd"} == {"a": 2, "b": 3, "c": 1, "d": 0}
    assert index.count() == 6


def test_points_persist_across_reopen(index: VectorIndex, backend: Backend) -> None:
    index.ensure_collection(DIM)
    index.upsert([face("a", f"img{n}", 0, unit(n)) for n in range(10)])
    before = [(hit.id, round(hit.score, 5)) for hit in index.search("a", unit(3), top_k=5)]
    index.close()

    reopened = backend.open()
    try:
        assert reopened.vector_size() == DIM
        assert reopened.count("a") == 10
        assert [(hit.id, round(hit.score, 5)) for hit in reopened.search("a", unit(3), top_k=5)] == before
        assert reopened.ensure_collection(DIM) is False
    finally:
        reopened.close()


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


def test_a_second_opener_in_this_process_is_refused_naming_the_folder(
    index: VectorIndex, backend: Backend
) -> None:
    index.ensure_collection(DIM)
    if not backend.exclusive:
        second = backend.open()  # a server admits any number of clients
        assert second.count() == 0
        second.close()
        return
    assert backend.path is not None
    with pytest.raises(RuntimeError, match=str(backend.path)):
        backend.open()
    assert index.count() == 0  # the first one still works


# --- real processes -------------------------------------------------------------------------------

EMBEDDED = [kind for kind in KINDS if kind != "server-rest"]


@pytest.fixture(params=EMBEDDED)
def held(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Backend, Holder]]:
    """An embedded backend and a real child process holding its store, writing batch after batch."""
    backend = make_backend(request.param, tmp_path)
    assert backend.path is not None
    holder = Holder(request.param, backend.path)
    yield backend, holder
    holder.kill9()


def test_a_second_process_is_refused_while_one_holds_the_store(held: tuple[Backend, Holder]) -> None:
    backend, holder = held
    holder.wait_for(lambda line: line == "open")
    with pytest.raises(RuntimeError, match=str(backend.path)) as refused:
        backend.open()
    if backend.kind == "edge":  # ours also says who holds it
        assert f"process {holder.proc.pid} " in str(refused.value)
        assert "vectorkit.py" in str(refused.value)
    holder.kill9()
    index = backend.open()  # the holder's lock died with it
    index.close()


def test_kill9_of_the_holder_loses_no_acknowledged_upsert(held: tuple[Backend, Holder]) -> None:
    backend, holder = held
    holder.wait_for(lambda line: line == "acked 5")
    acked = holder.kill9()  # while it is in the middle of further upserts
    assert acked >= 5

    index = backend.open()
    try:
        stored: dict[str, int] = {}
        for hit in index.scroll("t", batch=500):
            stored[hit.payload["image_sha256"]] = stored.get(hit.payload["image_sha256"], 0) + 1
        for number in range(acked + 1):
            assert stored.get(f"batch{number}") == FACES_PER_BATCH, (number, acked)
        # The vectors came back intact, not just the payloads.
        best = index.search("t", unit(acked * 1000 + 7), top_k=1)[0]
        assert best.id == point_id("t", f"batch{acked}", 7)
        assert best.score == pytest.approx(1.0, abs=1e-5)
        index.upsert([FacePoint("t", "after", 0, unit(5), {})])  # and it takes writes again
        assert index.count("t") == sum(stored.values()) + 1
    finally:
        index.close()
