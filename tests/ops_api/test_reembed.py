"""The model-pack backfill (facepipe.ops_api.reembed) on faces the real stages indexed.

Real Redis, SeaweedFS and Qdrant Edge; the buffalo_sc and opencv_yunet_sface models on the
photos of ../shared/data/faces. Searches go through the ops-api app (TestClient) while the
backfill runs, from its progress callback, so every page of the backfill is followed by a
search whose answer is checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from packkit import (
    group_photos,
    identities,
    index_photos,
    query_vector,
    same_person_first,
    sha_of,
    top_images,
)

from facepipe.core.settings import Settings
from facepipe.ops_api.app import create_app
from facepipe.ops_api.backend import OpsBackend
from facepipe.ops_api.reembed.backfill import Reembedder, ReembedReport
from facepipe.ops_api.reembed.options import ReembedOptions
from facepipe.ops_api.search import SearchModels
from facepipe.store.deletion import delete_image
from facepipe.store.pack_migration import LockHeldError, MigrationRecords, MigrationState
from facepipe.store.storage import ObjectStore, artifact_keys
from facepipe.store.vectors import VectorIndex
from facepipe.vision.imaging import decode_jpeg

pytestmark = pytest.mark.slow
TENANT = "demo"
BUFFALO, SFACE = "buffalo_sc", "opencv_yunet_sface"


@dataclass
class World:
    settings: Settings
    client: redis.Redis
    store: ObjectStore
    index: VectorIndex
    packs: dict[str, Any]  # pack name -> loaded models (tests/conftest.py LoadedPack)
    photos: list[Path]

    def index_photos(self, paths: list[Path], pack: str = BUFFALO) -> None:
        settings = self.settings.model_copy(update={"model_pack": pack})
        clients = {"client": self.client, "store": self.store, "index": self.index}
        index_photos(settings, self.packs[pack], paths, TENANT, **clients)

    def run(self, pack: str, progress: Any = None, **options: Any) -> ReembedReport:
        return Reembedder(
            self.settings, TENANT, pack, index=self.index, store=self.store, redis_client=self.client,
            options=ReembedOptions(**{"settle_s": 0.5, "page": 4, "batch": 3, **options}),
            embedder=self.packs[pack].embedder, progress=progress,
        ).run()

    def record(self) -> MigrationState:
        state = MigrationRecords(self.client, self.settings.qdrant_collection).load(TENANT)
        assert state is not None
        return state

    def collection(self, pack: str) -> VectorIndex:
        return self.index.view(f"{self.settings.qdrant_collection}_{pack}_v1")


@pytest.fixture
def world(
    settings: Settings, redis_client: redis.Redis, buffalo_sc: Any, load_model_pack: Any, faces_dir: Path
) -> Iterator[World]:
    # Every detected face reaches the index (one face of a group photo is in profile).
    settings = settings.model_copy(update={"max_pose_ratio": 100.0, "model_pack": BUFFALO})
    store = ObjectStore(settings)
    store.ensure_buckets()
    index = VectorIndex(settings)
    photos = sorted(p for p in faces_dir.iterdir() if p.suffix in {".jpg", ".png"})
    packs = {BUFFALO: buffalo_sc, SFACE: load_model_pack(SFACE)}
    yield World(settings, redis_client, store, index, packs, photos)
    index.close()


def ids(index: VectorIndex) -> set[str]:
    return {hit.id for hit in index.scroll(TENANT)}


def test_a_migration_re_embeds_every_face_while_search_answers_and_switches_in_one_step(
    world: World, faces_manifest: dict[str, dict], faces_dir: Path
) -> None:
    world.index_photos(world.photos)
    before = ids(world.index)
    assert len(before) == sum(photo["faces"] for photo in faces_manifest.values())

    backend = OpsBackend(world.settings, redis_client=world.client, index=world.index)
    for pack in world.packs.values():
        backend.provide_models(SearchModels(pack.detector, pack.embedder))
    answers: list[tuple[str, str]] = []  # (phase, pack that answered) for each search
    obama = identities(faces_manifest, faces_dir)["obama"]
    groups = group_photos(faces_manifest, faces_dir)
    with TestClient(create_app(world.settings, backend, warm_models=False)) as api:

        def search_now(state: MigrationState) -> None:
            with obama[-1].open("rb") as image:
                form = {"tenant_id": TENANT, "top_k": "20"}
                response = api.post("/search", files={"image": image}, data=form)
            assert response.status_code == 200, response.text
            [face] = response.json()["faces"]
            assert len(face["matches"]) == len(before), f"an incomplete answer during {state.phase}"
            ranked = [match["image_sha256"] for match in face["matches"]]
            assert same_person_first(ranked, obama, groups), state.phase
            answers.append((state.phase, response.json()["model"]["pack"]))

        report = world.run(SFACE, progress=search_now)

    assert (report.action, report.migrated, report.embedded) == ("migrated", len(before), len(before))
    assert [pack for phase, pack in answers if phase == "backfilling"] == [BUFFALO] * sum(
        1 for phase, _ in answers if phase == "backfilling"
    )
    assert answers[-1] == ("complete", SFACE) and len(answers) > 4
    route = world.index.route(TENANT)
    assert route.pack is not None and route.pack.name == SFACE
    assert ids(world.index) == before  # the same point ids: none missing, none added
    assert world.collection(BUFFALO).count(TENANT) == len(before)  # kept for a change back

    sface = world.packs[SFACE]
    for who, paths in identities(faces_manifest, faces_dir).items():
        for path in paths:
            ranked = top_images(world.index, TENANT, query_vector(sface, path), len(before))
            assert same_person_first(ranked, paths, groups), (who, path.name)

    hit = next(h for h in world.index.scroll(TENANT, with_vectors=True) if h.payload["face_index"] == 0)
    crop = world.store.get_bytes(world.settings.bucket_crops, hit.payload["artifacts"]["crop"]["key"])
    np.testing.assert_allclose(hit.vector, sface.embedder.embed([decode_jpeg(crop)])[0], atol=1e-5)
    assert hit.payload["model_pack"] == SFACE and hit.payload["model"]["dim"] == 128
    assert hit.payload["model"]["detector_pack"] == BUFFALO  # the face was found by buffalo_sc's detector

    record = world.record()
    assert (record.active, record.target, record.phase) == (SFACE, "", "complete")
    assert [kept.pack for kept in record.previous] == [BUFFALO]


def test_a_face_the_old_pods_index_during_the_backfill_is_caught_up_before_the_switch(world: World) -> None:
    late = world.photos[-1]
    world.index_photos(world.photos[:-1])

    def old_pod_indexes_one_more(state: MigrationState) -> None:
        if state.phase == "backfilling" and not late_indexed:
            late_indexed.append(True)
            world.index_photos([late])  # into the collection demo searches (buffalo_sc's)

    late_indexed: list[bool] = []
    world.run(SFACE, progress=old_pod_indexes_one_more)
    assert late_indexed
    late_faces = {hit.id for hit in world.index.scroll(TENANT, image_sha256=sha_of(late))}
    assert late_faces and late_faces <= ids(world.collection(SFACE))
    assert ids(world.collection(SFACE)) == ids(world.collection(BUFFALO))


def test_changing_back_before_the_switch_rolls_back_and_keeps_the_new_pods_faces(world: World) -> None:
    held_back = world.photos[0]
    world.index_photos(world.photos[1:])
    before = ids(world.index)

    def killed(state: MigrationState) -> None:
        if state.phase == "backfilling":
            raise KeyboardInterrupt("killed mid-way")

    with pytest.raises(KeyboardInterrupt):
        world.run(SFACE, progress=killed)
    assert world.record().phase == "backfilling"
    assert 0 < world.collection(SFACE).count(TENANT) < len(before)
    world.index_photos([held_back], pack=SFACE)  # a new pod (opencv_yunet_sface) indexes a new image
    new_face = {hit.id for hit in world.collection(SFACE).scroll(TENANT, image_sha256=sha_of(held_back))}
    assert new_face and not new_face & ids(world.index)  # not searchable: demo still searches buffalo_sc

    report = world.run(BUFFALO)  # the spec goes back to buffalo_sc before the migration finished
    assert report.action == "rolled back" and report.embedded == len(new_face)
    record = world.record()
    assert (record.active, record.target, record.phase) == (BUFFALO, "", "rolled_back")
    assert world.index.route(TENANT).collection == world.collection(BUFFALO).collection
    assert ids(world.index) == before | new_face  # the new pod's face is kept, embedded with buffalo_sc
    assert world.collection(SFACE).vector_size() is None  # the abandoned collection held only demo: dropped
    hits = world.index.search(TENANT, query_vector(world.packs[BUFFALO], held_back), top_k=2)
    found = {hit.payload["image_sha256"]: hit for hit in hits}  # (a group photo has the same Biden)
    assert found[sha_of(held_back)].score > 0.8  # its own face, found by YuNet, embedded by buffalo_sc
    assert found[sha_of(held_back)].payload["model"]["detector_pack"] == SFACE


def test_a_run_killed_mid_way_resumes_where_it_stopped(world: World) -> None:
    world.index_photos(world.photos)
    pages: list[int] = []

    def killed_after_two_pages(state: MigrationState) -> None:
        pages.append(state.migrated)
        if len(pages) == 2:
            raise KeyboardInterrupt("killed mid-way")

    with pytest.raises(KeyboardInterrupt):
        world.run(SFACE, progress=killed_after_two_pages)
    done = world.collection(SFACE).count(TENANT)
    assert world.record().offsets and done == 8  # two pages of 4
    report = world.run(SFACE)
    assert report.embedded == len(ids(world.index)) - done  # resumed: nothing embedded twice
    assert ids(world.collection(SFACE)) == ids(world.collection(BUFFALO))


def test_a_face_whose_crop_is_gone_is_skipped_and_counted(world: World) -> None:
    world.index_photos(world.photos)
    gone = sha_of(world.photos[0])
    world.store.delete(world.settings.bucket_crops, artifact_keys(TENANT, gone, 0).crop)
    report = world.run(SFACE)
    assert report.skipped == 1 and world.record().skipped == 1
    assert report.migrated == world.collection(BUFFALO).count(TENANT) - 1


class DeletingEmbedder:
    """The real recognizer; its first inference call runs ``deletion`` first (the race: an image
    deleted after the backfill fetched its crops and before it writes their new vectors)."""

    def __init__(self, embedder: Any, deletion: Callable[[], None]) -> None:
        self.embedder, self.deletion = embedder, deletion
        self.deleted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.embedder, name)

    def embed(self, crops: Any) -> Any:
        if not self.deleted:
            self.deleted = True
            self.deletion()
        return self.embedder.embed(crops)


def test_an_image_deleted_while_its_crops_are_embedded_does_not_come_back(world: World) -> None:
    world.index_photos(world.photos)
    old = world.collection(BUFFALO)
    [first, *_] = old.scroll_page(TENANT, 4, None)[0]  # in the first page: its crop is fetched first
    image = first.payload["image_sha256"]
    clients = {"redis_client": world.client, "store": world.store, "index": world.index}
    embedder = DeletingEmbedder(
        world.packs[SFACE].embedder, lambda: delete_image(world.settings, TENANT, image, **clients)
    )
    before = old.count(TENANT)
    report = Reembedder(
        world.settings, TENANT, SFACE, index=world.index, store=world.store, redis_client=world.client,
        options=ReembedOptions(settle_s=0.5, page=4, batch=3), embedder=embedder,  # type: ignore[arg-type]
    ).run()
    assert embedder.deleted and report.action == "migrated"
    new = world.collection(SFACE)
    assert [hit.id for hit in new.scroll(TENANT, image_sha256=image)] == []
    assert [hit.id for hit in old.scroll(TENANT, image_sha256=image)] == []
    assert report.migrated == new.count(TENANT) == old.count(TENANT) < before


def test_the_old_collection_is_kept_until_its_retention_or_a_cleanup(world: World) -> None:
    world.index_photos(world.photos)
    old = world.collection(BUFFALO)
    world.run(SFACE, retain_hours=1000)
    assert old.count(TENANT) > 0
    assert world.run(SFACE).action == "already active" and old.count(TENANT) > 0  # not expired yet
    reembedder = Reembedder(
        world.settings, TENANT, SFACE, index=world.index, store=world.store, redis_client=world.client
    )
    assert [kept.collection for kept in reembedder.clean_up()] == [old.collection]
    assert old.vector_size() is None and world.record().previous == []  # demo was its only tenant

    world.run(BUFFALO, retain_hours=0)  # back, keeping sface's faces for no time at all
    world.run(BUFFALO)  # any later run sweeps what has expired
    assert world.collection(SFACE).vector_size() is None


def test_one_run_per_tenant_and_a_pack_without_files_changes_nothing(world: World, tmp_path: Path) -> None:
    world.index_photos(world.photos)
    lock = MigrationRecords(world.client, world.settings.qdrant_collection).lock(TENANT)
    lock.acquire()
    with pytest.raises(LockHeldError, match="another backfill works on this tenant"):
        world.run(SFACE, lock_wait_s=0.0)
    lock.release()

    empty = world.settings.model_copy(update={"models_dir": tmp_path / "no-models"})
    clients = {"index": world.index, "store": world.store, "redis_client": world.client}
    no_files = Reembedder(empty, TENANT, SFACE, **clients)
    with pytest.raises(FileNotFoundError, match="face_recognition_sface"):
        no_files.run()
    assert world.index.route(TENANT).pack.name == BUFFALO  # type: ignore[union-attr]
    assert world.collection(SFACE).vector_size() is None and world.record().target == ""


def test_a_run_killed_between_recording_the_switch_and_making_it_switches_on_the_next_run(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.index_photos(world.photos)

    def killed(tenant: str, collection: str) -> None:
        # A process dying at exactly this point cannot be arranged from outside: the switch is
        # replaced by a crash here, and only here.
        raise KeyboardInterrupt("killed between the record and the alias")

    monkeypatch.setattr(world.index, "set_route", killed)
    with pytest.raises(KeyboardInterrupt):
        world.run(SFACE)
    assert world.record().phase == "switched" and world.index.route(TENANT).pack.name == BUFFALO  # type: ignore[union-attr]
    monkeypatch.undo()

    report = world.run(SFACE)
    assert (report.action, report.embedded) == ("migrated", 0)  # every face was in already
    assert world.index.route(TENANT).pack.name == SFACE  # type: ignore[union-attr]
    record = world.record()
    assert record.phase == "complete" and [kept.pack for kept in record.previous] == [BUFFALO]
