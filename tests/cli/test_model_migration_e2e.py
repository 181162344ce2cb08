"""Changing the model pack of a real local stack: buffalo_sc -> opencv_yunet_sface (512-d -> 128-d) -> back.

`facepipe up` in a subprocess (embedded Redis, SeaweedFS, Qdrant Edge, the real models),
restarted with the other MODEL_PACK as a deployment would roll its pods; `facepipe reembed`
from "another terminal" runs the backfill inside the stack (the process that holds the
embedded store) while a thread keeps searching. Every answer during each migration must be
complete and right: no error, no empty or partial answer from a half-built collection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from localstack import Stack, running_stack, stack_env
from packkit import group_photos, identities, same_person_first, sha_of

pytestmark = pytest.mark.slow
TENANT = "demo"
BUFFALO, SFACE = "buffalo_sc", "opencv_yunet_sface"


class Searcher(threading.Thread):
    """POST /search with one photo, again and again until stopped; every answer is kept."""

    def __init__(self, api: str, photo: Path) -> None:
        super().__init__(daemon=True)
        self.api, self.photo = api, photo
        self.answers: list[tuple[int, Any]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=60) as client:
            while not self.stopping.is_set():
                try:
                    response = client.post(
                        "/search",
                        files={"image": (self.photo.name, self.photo.read_bytes())},
                        data={"tenant_id": TENANT, "top_k": "50"},
                    )
                    self.answers.append((response.status_code, response.json()))
                except (httpx.HTTPError, ValueError) as exc:
                    self.answers.append((0, repr(exc)))
                time.sleep(0.1)


@contextmanager
def searching(stack: Stack, photo: Path) -> Iterator[Searcher]:
    searcher = Searcher(stack.api, photo)
    searcher.start()
    try:
        yield searcher
    finally:
        searcher.stopping.set()
        searcher.join(timeout=120)


def search(stack: Stack, photo: Path) -> list[str]:
    """The image ids of every match of the photo's face, best first."""
    with photo.open("rb") as image:
        form = {"tenant_id": TENANT, "top_k": "50"}
        body = httpx.post(f"{stack.api}/search", files={"image": image}, data=form, timeout=60).json()
    [face] = body["faces"]
    return [match["image_sha256"] for match in face["matches"]]


def migration(stack: Stack) -> dict[str, Any]:
    return httpx.get(f"{stack.api}/migrations/{TENANT}", timeout=30).json()


Expected = dict[str, tuple[int, list[Path]]]  # pack -> (faces it searches, the person's photos among them)


def check_answers(searcher: Searcher, expected: Expected, groups: set[str]) -> set[str]:
    """Every answer complete and right (for the pack that gave it); the packs that answered."""
    assert len(searcher.answers) >= 5, "too few searches to show anything"
    packs = set()
    for status, body in searcher.answers:
        assert status == 200, body
        pack = body["model"]["pack"]
        [face] = body["faces"]
        ranked = [match["image_sha256"] for match in face["matches"]]
        size, person = expected[pack]
        assert len(ranked) == size, (pack, len(ranked))  # never a half-built collection
        assert same_person_first(ranked, person, groups), pack
        packs.add(pack)
    return packs


def check_identities(stack: Stack, people: dict[str, list[Path]], groups: set[str]) -> None:
    for who, photos in people.items():
        for photo in photos:
            assert same_person_first(search(stack, photo), photos, groups), (who, photo.name)


def test_change_the_pack_and_back_while_search_keeps_answering(
    tmp_path: Path, models_dir: Path, faces_dir: Path, faces_manifest: dict[str, dict]
) -> None:
    people = identities(faces_manifest, faces_dir)
    groups = group_photos(faces_manifest, faces_dir)
    held_back = people["obama"][-1]  # indexed while the first migration runs, by the new pack's pods
    photos = sorted(faces_dir / name for name in faces_manifest if faces_dir / name != held_back)
    obama_before = [p for p in people["obama"] if p != held_back]
    env = stack_env(models_dir, MAX_POSE_RATIO="100")  # every face reaches the index (one is in profile)

    with running_stack(tmp_path, {**env, "MODEL_PACK": BUFFALO}) as stack:
        summary = stack.cli_json("ingest", *map(str, photos), "--tenant", TENANT, "--wait")
        faces = summary["faces_processed"]
        assert faces == sum(faces_manifest[p.name]["faces"] for p in photos) and summary["dlq"] == 0
        check_identities(stack, {**people, "obama": obama_before}, groups)

    with running_stack(tmp_path, {**env, "MODEL_PACK": SFACE}) as stack:
        assert stack.cli_json("ingest", str(held_back), "--tenant", TENANT, "--wait")["faces_processed"] == 1
        assert migration(stack)["pack"] == BUFFALO  # new pods index into their pack's collection meanwhile
        assert sha_of(held_back) not in search(stack, people["obama"][0])
        with searching(stack, people["obama"][0]) as searcher:
            out = stack.cli(
                "reembed",
                "--tenant",
                TENANT,
                "--pack",
                SFACE,
                "--max-faces-per-s",
                "4",
                "--settle-s",
                "3",
                timeout=600,
            ).stdout
        assert f"tenant {TENANT} searches with {SFACE}: {faces + 1} faces" in out, out
        expected = {BUFFALO: (faces, obama_before), SFACE: (faces + 1, people["obama"])}
        assert check_answers(searcher, expected, groups) == {BUFFALO, SFACE}
        state = migration(stack)
        assert state["pack"] == SFACE and state["collection"].endswith(f"_{SFACE}_v1")
        record = state["record"]
        assert (record["phase"], record["migrated"], record["total"]) == ("complete", faces + 1, faces + 1)
        assert [kept["pack"] for kept in record["previous"]] == [BUFFALO]
        check_identities(stack, people, groups)

    with running_stack(tmp_path, {**env, "MODEL_PACK": BUFFALO}) as stack:
        with searching(stack, people["biden"][0]) as searcher:
            command = ("reembed", "--tenant", TENANT, "--pack", BUFFALO, "--settle-s", "3")
            out = stack.cli(*command, timeout=600).stdout
        assert f"tenant {TENANT} searches with {BUFFALO}: {faces + 1} faces" in out, out
        expected = {pack: (faces + 1, people["biden"]) for pack in (SFACE, BUFFALO)}
        assert BUFFALO in check_answers(searcher, expected, groups)
        assert migration(stack)["pack"] == BUFFALO
        check_identities(stack, people, groups)  # the held-back photo too, now embedded by buffalo_sc
