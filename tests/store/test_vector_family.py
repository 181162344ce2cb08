"""The collection family and its tenant aliases, on every backend (tests/store/vectorkit.py).

``VectorIndex(settings)`` is the family ``QDRANT_COLLECTION``: one collection per model pack,
and per tenant an alias naming the collection its searches use (a Qdrant alias on a server,
the embedded store's recorded pointer on Qdrant Edge). What a model-pack migration relies on:
a tenant's reads and writes follow its alias, the switch is one step, views reach any
collection on the same connection, and deleting a face reaches every collection it is in.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from vectorkit import DIM, Backend, unit

from facepipe.core.packs import get_pack
from facepipe.store.vectors import FacePoint, VectorIndex, point_id
from facepipe.store.vectors.naming import alias_tenant, pack_collection, pack_of_name, tenant_alias

SFACE = get_pack("opencv_yunet_sface")
BUFFALO = get_pack("buffalo_sc")


def faces(tenant: str, count: int, seed: int = 0, pack: str = "buffalo_sc") -> list[FacePoint]:
    payload = {"site": "s", "model_pack": pack}
    return [FacePoint(tenant, f"img{n}", 0, unit(seed + n), payload) for n in range(count)]


def test_names_of_a_family() -> None:
    assert pack_collection("faces_v1", SFACE) == "faces_v1_opencv_yunet_sface_v1"
    assert pack_of_name("faces_v1", "faces_v1_opencv_yunet_sface_v1") is SFACE
    assert pack_of_name("faces_v1", "faces_v1") is None
    assert pack_of_name("faces_v1", "faces_v2_buffalo_sc_v1") is None
    assert tenant_alias("faces_v1", "acme.eu") == "faces_v1@acme.eu"
    assert alias_tenant("faces_v1", "faces_v1@acme.eu") == "acme.eu"
    assert alias_tenant("faces_v1", "faces_v2@acme") is None


def test_a_tenant_alias_routes_its_reads_and_writes_and_switches_in_one_step(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    index.upsert(faces("a", 3) + faces("b", 2))
    other = index.view("faces_other")
    other.ensure_collection(DIM)
    other.upsert(faces("a", 5, seed=100))
    assert index.route("a").pinned is False and index.route("a").collection == "faces"

    index.set_route("a", "faces_other")
    route = index.route("a")
    assert (route.collection, route.pinned) == ("faces_other", True)
    assert index.count("a") == 5 and index.count("b") == 2  # b has no alias: the base collection
    best = index.search("a", unit(103), top_k=1)[0]
    assert best.id == point_id("a", "img3", 0) and best.score == pytest.approx(1.0, abs=1e-5)
    assert len(list(index.scroll("a"))) == 5
    index.upsert([FacePoint("a", "new", 0, unit(7), {})])  # writes follow the alias too
    assert other.count("a") == 6 and index.view("faces").count("a") == 3

    index.set_route("a", "faces")  # back: the alias names one collection at any moment
    assert index.count("a") == 3 and index.route("a").collection == "faces"
    with pytest.raises(RuntimeError, match="no such collection"):
        index.set_route("a", "faces_missing")
    assert index.route("a").collection == "faces"


def test_views_share_the_connection_and_closing_one_keeps_the_index_open(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    view = index.view("faces")
    view.upsert(faces("a", 2))
    view.close()
    assert index.count("a") == 2
    assert index.existing_ids([point_id("a", "img1", 0), point_id("a", "img9", 0)]) == {
        point_id("a", "img1", 0)
    }
    assert index.view("faces_none").existing_ids([point_id("a", "img1", 0)]) == set()


def test_deleting_an_image_or_a_tenant_reaches_every_collection_of_the_family(index: VectorIndex) -> None:
    index.ensure_collection(DIM)
    sface = index.view(pack_collection("faces", SFACE))
    sface.ensure_collection(DIM)
    outsider = index.view("elsewhere")  # not of the family: never touched
    outsider.ensure_collection(DIM)
    for collection in (index.view("faces"), sface, outsider):
        collection.upsert(faces("a", 3) + faces("b", 1))
    index.set_route("a", sface.collection)
    assert index.family_collections() == ["faces", sface.collection]

    assert index.delete_image("a", "img0") == 2  # one point in each collection of the family
    assert index.delete_tenant("a") == 4
    assert index.view("faces").count("a") == sface.count("a") == 0
    assert outsider.count("a") == 3 and index.view("faces").count("b") == sface.count("b") == 1


def test_pinning_keeps_a_tenant_where_its_faces_are_and_starts_a_new_one_on_its_pack(
    index: VectorIndex,
) -> None:
    index.ensure_collection(DIM)
    index.upsert(faces("old", 2, pack="buffalo_sc"))
    assert index.pack_of("faces") is BUFFALO  # the base collection's pack: read from a point
    kept = index.pin_route("old", SFACE)
    assert (kept.collection, kept.pack, kept.pinned) == ("faces", BUFFALO, True)

    fresh = index.pin_route("new", SFACE)
    assert (fresh.collection, fresh.pack) == (pack_collection("faces", SFACE), SFACE)
    assert index.view(fresh.collection).vector_size() == SFACE.dim
    assert index.pin_route("new", BUFFALO) == fresh  # pinned once: a later pack does not move it


def test_a_collection_an_alias_names_is_never_dropped(index: VectorIndex) -> None:
    index.view("faces_a").ensure_collection(DIM)
    index.view("faces_b").ensure_collection(DIM)
    index.set_route("t", "faces_a")
    assert index.drop_collection("faces_a") is False
    assert index.drop_collection("faces_b") is True and index.view("faces_b").vector_size() is None
    index.forget_route("t")
    assert tenant_alias("faces", "t") not in index.aliases()
    assert index.drop_collection("faces_a") is True


def test_aliases_survive_reopening_the_store(index: VectorIndex, backend: Backend) -> None:
    index.view("faces_a").ensure_collection(DIM)
    index.set_route("t", "faces_a")
    index.close()
    reopened = backend.open()
    try:
        assert reopened.route("t").collection == "faces_a"
    finally:
        reopened.close()
    if backend.kind == "edge":  # the embedded store's pointer: one JSON file beside the vectors
        assert backend.path is not None
        assert json.loads((backend.path / "aliases.json").read_text()) == {"faces@t": "faces_a"}
        assert not list(backend.path.glob(".aliases.json*"))  # replaced atomically, no leftovers


def test_an_unknown_base_collection_has_no_pack(index: VectorIndex) -> None:
    assert index.pack_of("faces") is None  # no collection
    index.ensure_collection(DIM)
    assert index.pack_of("faces") is None  # no point tells
    index.upsert([FacePoint("t", "x", 0, np.ones(DIM, dtype=np.float32) / DIM**0.5, {"model_pack": "nope"})])
    assert index.pack_of("faces") is None  # nor one of another program
