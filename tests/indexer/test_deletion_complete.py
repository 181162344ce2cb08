"""Deleting an image or a tenant removes every copy: not one byte of its crops, embeddings, pHashes
or ids is left in any Redis key (streams and DLQs included), any bucket, or the collection.

Real photos through the real detector, embedder and indexer (buffalo_sc), then DELETE through the
ops-api. The streams keep their finished entries (STREAM_RETENTION_MS), one ingest message of the
image waits unread, and one of its embedded messages sits in the indexer's DLQ with its crops and
embeddings: the deletion must find every one of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from leftovers import Secrets, found

from facepipe.core.settings import Settings, dlq_stream, load_settings
from facepipe.core.worker import Worker
from facepipe.detector.handler import DetectorHandler
from facepipe.embedder.handler import EmbedderHandler
from facepipe.indexer import IndexerHandler
from facepipe.ops_api.app import create_app
from facepipe.ops_api.backend import OpsBackend
from facepipe.store.storage import ObjectStore, image_prefix
from facepipe.store.vectors import point_id

pytestmark = pytest.mark.slow

VICTIM, BYSTANDER = "victim-t7q", "bystander"
# (tenant, photo): the first is the one deleted; the others must stay.
PHOTOS = [(VICTIM, "obama_1.jpg"), (VICTIM, "biden_1.jpg"), (BYSTANDER, "two_people.jpg")]


@dataclass
class Indexed:
    settings: Settings
    client: TestClient  # the ops-api
    backend: OpsBackend
    shas: dict[str, str]  # photo -> sha256
    embedded: dict[str, dict[str, Any]]  # photo -> its embedded message

    def secrets(self, photo: str, tenant: str) -> Secrets:
        """Every trace of one image of one tenant."""
        secrets = Secrets()
        sha, message = self.shas[photo], self.embedded[photo]
        secrets.add(f"{photo}'s id", sha)
        for face in message["faces"]:
            index = face["index"]
            secrets.add(f"face {index}'s point id", point_id(tenant, sha, index))
            secrets.add(f"face {index}'s pHash", face["phash"])
            secrets.add(f"face {index}'s pHash bytes", bytes.fromhex(face["phash"]))
            # Their last bytes: the first ones (JPEG header, tables) are the same in every crop.
            secrets.add(f"face {index}'s crop (base64)", face["crop_jpeg_b64"][-400:])
            secrets.add(f"face {index}'s crop", base64.b64decode(face["crop_jpeg_b64"])[-300:])
            secrets.add(f"face {index}'s embedding (base64)", face["embedding_b64"][-400:])
            secrets.vectors.append(np.frombuffer(base64.b64decode(face["embedding_b64"]), dtype="<f4"))
        return secrets

    def leftovers(self, secrets: Secrets) -> list[str]:
        settings, store = self.settings, ObjectStore(self.settings)
        return found(secrets, settings.redis_url, store, store.buckets,
                     self.backend.index, {tenant for tenant, _ in PHOTOS})


def _ingest(client: redis.Redis, settings: Settings, tenant: str, sha: str, key: str) -> None:
    message = {"image_sha256": sha, "bucket": settings.bucket_raw, "key": key, "tenant_id": tenant,
               "site": "faces.test", "url": f"https://faces.test/{sha}", "face_hints": None}
    client.xadd(settings.ingest_stream, {"message": json.dumps(message)})


@pytest.fixture
def indexed(
    base_env: dict[str, str], models_dir: Path, monkeypatch: pytest.MonkeyPatch, buffalo_sc: Any,
    faces_dir: Path, redis_client: redis.Redis,
) -> Iterator[Indexed]:
    for name, value in {**base_env, "MODEL_PACK": "buffalo_sc", "MODELS_DIR": str(models_dir),
                        "INFERENCE_DEVICE": "cpu", "ORT_INTRA_OP_THREADS": "1", "READ_BLOCK_MS": "200",
                        "STREAM_RETENTION_MS": "3600000", "MAX_POSE_RATIO": "100"}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    store = ObjectStore(settings)
    store.ensure_buckets()
    shas = {}
    for tenant, photo in PHOTOS:
        data = (faces_dir / photo).read_bytes()
        shas[photo] = hashlib.sha256(data).hexdigest()
        key = f"{image_prefix(tenant, shas[photo])}original.jpg"
        store.put_bytes(settings.bucket_raw, key, data, "image/jpeg")
        _ingest(redis_client, settings, tenant, shas[photo], key)
    for handler in (DetectorHandler(settings, detector=buffalo_sc.detector),
                    EmbedderHandler(settings, embedder=buffalo_sc.embedder), IndexerHandler(settings)):
        assert Worker(settings, handler, max_batch=16, once=True).run() == 0
    embedded = {}
    for _id, fields in redis_client.xrange(settings.embedded_stream):
        message = json.loads(fields["message"])
        photo = next(p for p, sha in shas.items() if sha == message["ingest"]["image_sha256"])
        embedded[photo] = message
    # A copy the indexer refuses: a dead letter holding the image's crops and embeddings.
    wrong_pack = {**embedded["obama_1.jpg"], "model": {**embedded["obama_1.jpg"]["model"], "pack": "other"}}
    redis_client.xadd(settings.embedded_stream, {"message": json.dumps(wrong_pack)})
    assert Worker(settings, IndexerHandler(settings), once=True).run() == 0
    assert redis_client.xlen(dlq_stream(settings.embedded_stream)) == 1
    # The same image ingested again, not read yet.
    _ingest(redis_client, settings, VICTIM, shas["obama_1.jpg"], "elsewhere/obama.jpg")

    backend = OpsBackend(settings)
    with TestClient(create_app(settings, backend, warm_models=False)) as client:
        yield Indexed(settings, client, backend, shas, embedded)


def test_deleting_an_image_leaves_no_byte_of_it_anywhere(indexed: Indexed) -> None:
    deleted = indexed.secrets("obama_1.jpg", VICTIM)
    assert indexed.leftovers(deleted)  # the scan finds it before the deletion
    response = indexed.client.delete(f"/images/{indexed.shas['obama_1.jpg']}", params={"tenant_id": VICTIM})
    assert response.status_code == 200, response.text
    report = response.json()
    # ingest x2, detected, embedded x2 (the refused copy too), and the dead letter
    assert (report["points"], report["dedup_entries"], report["stream_entries"]) == (1, 1, 6)
    assert indexed.leftovers(deleted) == []
    for photo, tenant in (("biden_1.jpg", VICTIM), ("two_people.jpg", BYSTANDER)):  # untouched
        assert len(indexed.leftovers(indexed.secrets(photo, tenant))) > 5


def test_purging_a_tenant_leaves_no_byte_of_it_anywhere(indexed: Indexed, redis_client: redis.Redis) -> None:
    deleted = Secrets()
    for photo in ("obama_1.jpg", "biden_1.jpg"):
        deleted.needles |= indexed.secrets(photo, VICTIM).needles
        deleted.vectors += indexed.secrets(photo, VICTIM).vectors
    deleted.add("the tenant id", VICTIM)
    assert redis_client.hget(f"stats:tenant:{VICTIM}:counters", "faces_processed") == "2"
    response = indexed.client.delete(f"/tenants/{VICTIM}")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["points"] == 2 and report["stream_entries"] == 9 and report["stats_keys"] > 0
    assert indexed.leftovers(deleted) == []
    assert len(indexed.leftovers(indexed.secrets("two_people.jpg", BYSTANDER))) > 5
