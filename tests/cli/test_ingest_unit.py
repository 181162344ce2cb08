"""facepipe ingest's pieces that need no running stack: file discovery, keys, messages, CLI errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from facepipe.cli import ingest
from facepipe.cli.main import main
from facepipe.cli.samples import astronaut_png, insightface_t1
from facepipe.core.errors import PermanentError
from facepipe.core.messages import IngestMessage
from facepipe.core.settings import load_settings


def test_find_images_walks_folders_recursively_and_keeps_explicit_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.JPG", "a/b/two.png", "a/b/three.webp", "a/notes.txt", "a/b/four.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "a" / "notes.txt"
    found = ingest.find_images([tmp_path / "a", explicit, tmp_path / "a" / "one.JPG"])
    names = [p.name for p in found]
    assert sorted(names) == ["four.jpeg", "notes.txt", "one.JPG", "three.webp", "two.png"]
    assert len(found) == len(set(found))  # one.JPG given twice, listed once
    with pytest.raises(ingest.IngestError, match="no such file or folder"):
        ingest.find_images([tmp_path / "missing"])


def test_build_message_is_the_runbook_message_keyed_by_sha256(tmp_path: Path) -> None:
    settings = load_settings()
    path = insightface_t1()
    data = path.read_bytes()
    sha, payload = ingest.build_message(settings, "acme", "example.com", path, data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert payload["key"] == f"acme/{sha[:2]}/{sha}/original.jpg"
    assert payload["bucket"] == settings.bucket_raw
    assert payload["url"] == path.resolve().as_uri()
    assert len(payload["image_phash"]) == 16
    assert set(payload) == {
        "image_sha256",
        "bucket",
        "key",
        "tenant_id",
        "site",
        "url",
        "image_phash",
        "face_hints",
    }
    IngestMessage.model_validate(payload)  # the contract's model accepts it

    png = astronaut_png(tmp_path)
    _, png_payload = ingest.build_message(settings, "acme", "local", png, png.read_bytes())
    assert png_payload["key"].endswith("/original.png")


def test_build_message_refuses_non_images_and_bad_tenants(tmp_path: Path) -> None:
    settings = load_settings()
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(PermanentError) as exc:
        ingest.build_message(settings, "acme", "local", text, text.read_bytes())
    assert exc.value.reason == "not_an_image"
    path = insightface_t1()
    with pytest.raises(PermanentError) as bad_tenant:
        ingest.build_message(settings, "../etc", "local", path, path.read_bytes())
    assert bad_tenant.value.reason == "invalid_tenant_id"


def test_cli_reports_a_missing_stack_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], refused_port: int
) -> None:
    api = f"http://127.0.0.1:{refused_port}"  # nothing listens there
    assert main(["search", str(insightface_t1()), "--tenant", "demo", "--api", api]) == 1
    assert "no ops-api answers" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing.jpg"), "--tenant", "demo", "--api", api]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path), "--tenant", "demo", "--api", api]) == 1
    assert "no images" in capsys.readouterr().err
    assert main(["delete", "tenant", "demo", "--api", api]) == 2
    assert "--yes" in capsys.readouterr().err
