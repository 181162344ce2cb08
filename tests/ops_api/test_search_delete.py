"""POST /search and the GDPR deletes on faces indexed by the real pipeline stages (in-process workers)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from facepipe.cli.ingest import ingest_paths
from facepipe.core.settings import Settings
from facepipe.core.worker import Worker
from facepipe.detector.handler import DetectorHandler
from facepipe.embedder.handler import EmbedderHandler
from facepipe.indexer.handler import IndexerHandler
from facepipe.ops_api.app import create_app
from facepipe.ops_api.backend import OpsBackend
from facepipe.ops_api.search import SearchModels
from facepipe.store.storage import ObjectStore, image_prefix


def _index(
    settings: Settings, backend: OpsBackend, models: SearchModels, tenant: str, paths: list[Path], site: str
) -> None:
    """Ingest as the CLI does, then one batch of each real stage (sharing the API's Qdrant client)."""
    ingest_paths(settings, backend.redis, backend.store, paths, tenant, site=site)
    handlers = [
        DetectorHandler(settings, detector=models.detector),
        EmbedderHandler(settings, embedder=models.embedder),
        IndexerHandler(settings, index=backend.index),
    ]
    for handler in handlers:
        assert Worker(settings, handler, max_batch=20, once=True).run() == 0


@pytest.fixture
def indexed(settings: Settings, buffalo_sc, faces_dir: Path) -> tuple[TestClient, dict[str, str]]:
    """Tenants 'acme' (all photos, site acme.example) and 'zeta' (obama_1 + biden_1, site zeta.example)."""
    models = SearchModels(buffalo_sc.detector, buffalo_sc.embedder)
    backend = OpsBackend(settings, models=models)
    photos = sorted(p for p in faces_dir.iterdir() if p.suffix in {".jpg", ".png"})
    _index(settings, backend, models, "acme", photos, "acme.example")
    _index(
        settings,
        backend,
        models,
        "zeta",
        [faces_dir / "obama_1.jpg", faces_dir / "biden_1.jpg"],
        "zeta.example",
    )
    client = TestClient(create_app(settings, backend, warm_models=False))
    shas = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos}
    with client:
        yield client, shas


def _search(client: TestClient, path: Path, tenant: str, **form: str):
    with path.open("rb") as handle:
        return client.post(
            "/search", files={"image": (path.name, handle, "image/jpeg")}, data={"tenant_id": tenant, **form}
        )


def test_search_returns_the_tenants_matching_faces_only(
    indexed, faces_dir: Path, faces_manifest: dict[str, dict]
) -> None:
    client, shas = indexed
    response = _search(client, faces_dir / "obama_3.jpg", "zeta", top_k="10")
    assert response.status_code == 200, response.text
    body = response.json()
    [face] = body["faces"]
    matches = face["matches"]
    assert len(matches) == 2  # zeta has two faces in all; acme's many faces are never candidates
    assert {m["site"] for m in matches} == {"zeta.example"}
    best = matches[0]
    assert best["image_sha256"] == shas["obama_1.jpg"] and best["score"] > 0.5
    assert matches[1]["image_sha256"] == shas["biden_1.jpg"] and matches[1]["score"] < 0.3
    assert best["face_index"] == 0 and len(best["bbox"]) == 4
    assert best["url"].endswith("/obama_1.jpg")
    assert best["artifacts"]["crop"]["key"] == f"{image_prefix('zeta', best['image_sha256'])}face_0.jpg"
    assert set(best["artifacts"]) == {"crop", "thumb", "metadata"}
    assert body["model"]["pack"] == "buffalo_sc" and body["model"]["provider"] == "CPUExecutionProvider"

    acme = _search(client, faces_dir / "obama_3.jpg", "acme", top_k="3").json()["faces"][0]["matches"]
    assert [Path(m["url"]).name for m in acme][:1] == ["obama_3.jpg"]
    assert all(faces_manifest[Path(m["url"]).name]["identity"] in {"obama", None} for m in acme)
    assert {m["site"] for m in acme} == {"acme.example"}
    assert len(acme) == 3


def test_search_of_a_photo_without_faces_and_of_a_group_photo(indexed, faces_dir: Path) -> None:
    client, _ = indexed
    blank = io.BytesIO()
    Image.new("RGB", (200, 200), (120, 160, 200)).save(blank, format="PNG")
    response = client.post(
        "/search", files={"image": ("sky.png", blank.getvalue(), "image/png")}, data={"tenant_id": "acme"}
    )
    assert response.status_code == 200 and response.json()["faces"] == []
    group = _search(client, faces_dir / "obama_and_biden.jpg", "acme", top_k="1").json()
    assert len(group["faces"]) == 3
    assert all(len(face["matches"]) == 1 for face in group["faces"])


def test_search_bad_input_is_a_clear_4xx(make_client, settings: Settings, tmp_path: Path) -> None:
    client = make_client(max_upload_bytes=4096)
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32)).save(jpeg, format="JPEG")
    small = jpeg.getvalue()
    cases = [
        ({"files": {"image": ("a.jpg", small)}, "data": {}}, 422, "invalid_request", "tenant_id"),
        (
            {"files": {"image": ("a.jpg", small)}, "data": {"tenant_id": "a/../b"}},
            400,
            "invalid_tenant_id",
            "a/../b",
        ),
        (
            {"files": {"image": ("a.jpg", small)}, "data": {"tenant_id": "t", "top_k": "0"}},
            422,
            "invalid_request",
            "top_k",
        ),
        ({"data": {"tenant_id": "t"}}, 422, "invalid_request", "image"),
        (
            {"files": {"image": ("notes.txt", b"hello, not an image")}, "data": {"tenant_id": "t"}},
            415,
            "not_an_image",
            "notes.txt is not a readable image",
        ),
        ({"files": {"image": ("empty.jpg", b"")}, "data": {"tenant_id": "t"}}, 400, "empty_upload", "empty"),
        (
            {"files": {"image": ("big.jpg", small + b"\0" * 5000)}, "data": {"tenant_id": "t"}},
            413,
            "payload_too_large",
            "MAX_UPLOAD_BYTES",
        ),
        (
            {"files": {"image": ("huge.jpg", b"\xff" * 200_000)}, "data": {"tenant_id": "t"}},
            413,
            "payload_too_large",
            "MAX_UPLOAD_BYTES",
        ),
    ]
    for kwargs, status, error, words in cases:
        response = client.post("/search", **kwargs)
        assert response.status_code == status, (kwargs.get("data"), response.text)
        body = response.json()
        assert body["error"] == error, body
        assert words in body["message"], body


def test_oversize_chunked_upload_is_cut_off(make_client) -> None:
    client = make_client(max_upload_bytes=4096)

    def chunks():
        for _ in range(100):
            yield b"x" * 10_000

    response = client.post(
        "/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=zzz"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


def test_delete_image_and_tenant(
    indexed, settings: Settings, faces_dir: Path, redis_client: redis.Redis
) -> None:
    client, shas = indexed
    store = ObjectStore(settings)
    sha = shas["obama_1.jpg"]
    prefix = image_prefix("zeta", sha)
    assert all(list(store.list_keys(b, prefix)) for b in store.buckets)

    response = client.delete(f"/images/{sha}", params={"tenant_id": "zeta"})
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["points"], report["artifacts"], report["raw_objects"], report["dedup_entries"]) == (
        1,
        3,
        1,
        1,
    )
    assert not any(list(store.list_keys(b, prefix)) for b in store.buckets)
    remaining = _search(client, faces_dir / "obama_1.jpg", "zeta").json()["faces"][0]["matches"]
    assert [m["image_sha256"] for m in remaining] == [shas["biden_1.jpg"]]
    # acme's copy of the same photo is untouched.
    acme = _search(client, faces_dir / "obama_1.jpg", "acme", top_k="1").json()["faces"][0]["matches"]
    assert acme[0]["image_sha256"] == sha and acme[0]["score"] > 0.95
    again = client.delete(f"/images/{sha}", params={"tenant_id": "zeta"}).json()
    assert again["points"] == 0  # idempotent

    gone = client.delete("/tenants/zeta").json()
    assert gone["points"] == 1 and gone["dedup_entries"] >= 1
    assert _search(client, faces_dir / "obama_1.jpg", "zeta").json()["faces"][0]["matches"] == []
    assert not list(redis_client.scan_iter("dedup:t:zeta:*"))
    assert (
        len(_search(client, faces_dir / "obama_1.jpg", "acme", top_k="50").json()["faces"][0]["matches"]) >= 9
    )


def test_delete_bad_input(client: TestClient) -> None:
    cases = [
        ("/images/abc", {}, 422, "tenant_id: Field required"),
        ("/images/abc", {"tenant_id": "*"}, 400, "tenant_id '*' is invalid"),
        ("/images/a.b", {"tenant_id": "t"}, 400, "not an image id"),
        ("/tenants/a..b", {}, 400, "tenant_id 'a..b' is invalid"),
        ("/tenants/a:b", {}, 400, "tenant_id 'a:b' is invalid"),
    ]
    for path, params, status, words in cases:
        response = client.delete(path, params=params)
        assert response.status_code == status, (path, response.text)
        assert words in response.json()["message"], response.text
