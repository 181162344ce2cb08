"""Model packs on real photos: detection counts, identity separation, batch invariance, providers."""

from __future__ import annotations

import logging
from itertools import combinations
from pathlib import Path

import numpy as np
import onnx
import pytest

from facepipe.core.settings import load_settings
from facepipe.vision.imaging import align_face
from facepipe.vision.models import (
    ModelNotLoadedError,
    create_detector,
    create_embedder,
    detection_threshold,
    get_pack,
    select_providers,
)
from facepipe.vision.models.runtime import CPU, CUDA


def single_face_vectors(
    pack, photos: dict[str, np.ndarray], manifest: dict[str, dict]
) -> dict[str, np.ndarray]:
    vectors = {}
    for name, info in manifest.items():
        if info["identity"] is None:
            continue
        detections = pack.detector.detect(photos[name])
        assert len(detections) == 1, name
        vectors[name] = pack.embedder.embed([align_face(photos[name], detections[0].kps)])[0]
    return vectors


def assert_identities_separate(vectors: dict[str, np.ndarray], manifest: dict[str, dict]) -> None:
    same, different = [], []
    for a, b in combinations(sorted(vectors), 2):
        similarity = float(vectors[a] @ vectors[b])
        (same if manifest[a]["identity"] == manifest[b]["identity"] else different).append((similarity, a, b))
    assert same and different
    worst_same, best_different = min(same), max(different)
    assert worst_same[0] > best_different[0], (worst_same, best_different)


@pytest.mark.parametrize("pack_fixture", ["buffalo_sc", "yunet_sface"])
def test_face_counts_match_the_manifest_and_boxes_lie_inside(
    pack_fixture: str, request: pytest.FixtureRequest, photos: dict[str, np.ndarray], faces_manifest: dict
) -> None:
    pack = request.getfixturevalue(pack_fixture)
    for name, info in faces_manifest.items():
        img = photos[name]
        height, width = img.shape[:2]
        detections = pack.detector.detect(img)
        assert len(detections) == info["faces"], name
        for det in detections:
            x1, y1, x2, y2 = det.bbox
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, (name, det.bbox)
            assert det.kps.shape == (5, 2)
            assert 0.0 < det.score <= 1.0
            # Left eye left of right eye, eyes above the mouth: the landmark order align_face needs.
            assert det.kps[0, 0] < det.kps[1, 0] and det.kps[:2, 1].max() < det.kps[3:, 1].min()
        # Ordered left to right, so a face's index is stable across redelivery.
        lefts = [float(d.bbox[0]) for d in detections]
        assert lefts == sorted(lefts)


@pytest.mark.parametrize("pack_fixture", ["buffalo_sc", "yunet_sface"])
def test_same_identity_is_closer_than_every_different_identity(
    pack_fixture: str, request: pytest.FixtureRequest, photos: dict[str, np.ndarray], faces_manifest: dict
) -> None:
    pack = request.getfixturevalue(pack_fixture)
    vectors = single_face_vectors(pack, photos, faces_manifest)
    for vector in vectors.values():
        assert vector.shape == (pack.pack.dim,) and vector.dtype == np.float32
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
    assert_identities_separate(vectors, faces_manifest)


@pytest.mark.parametrize("pack_fixture", ["buffalo_sc", "yunet_sface"])
def test_a_face_vector_does_not_depend_on_its_batch(
    pack_fixture: str, request: pytest.FixtureRequest, photos: dict[str, np.ndarray]
) -> None:
    pack = request.getfixturevalue(pack_fixture)
    crops = []
    for name in ("obama_and_biden.jpg", "two_people.jpg", "obama_1.jpg", "biden_2.jpg"):
        crops += [align_face(photos[name], det.kps) for det in pack.detector.detect(photos[name])]
    # 32 crops: the 7 real faces, then flipped and shifted variants so the batch is not repetitive.
    batch = [*crops]
    while len(batch) < 32:
        source = crops[len(batch) % len(crops)]
        batch.append(np.ascontiguousarray(np.roll(source[:, ::-1], len(batch) % 5, axis=1)))
    together = pack.embedder.embed(np.stack(batch))
    alone = np.vstack([pack.embedder.embed([crop]) for crop in batch])
    assert together.shape == (32, pack.pack.dim)
    assert np.abs(together - alone).max() < 1e-4
    assert pack.embedder.embed([]).shape == (0, pack.pack.dim)


def test_face_hints_restrict_detection_to_their_regions(photos: dict[str, np.ndarray], buffalo_sc) -> None:
    img = photos["obama_and_biden.jpg"]
    everywhere = buffalo_sc.detector.detect(img)
    assert len(everywhere) == 3
    hinted = buffalo_sc.detector.detect_in_regions(img, [everywhere[2].bbox, everywhere[0].bbox])
    assert len(hinted) == 2
    for found, expected in zip(hinted, [everywhere[0], everywhere[2]], strict=True):
        assert np.abs(found.bbox - expected.bbox).max() < 0.1 * (expected.bbox[2] - expected.bbox[0])
        assert np.abs(found.kps - expected.kps).max() < 10
    # Two overlapping hints over one face report it once; a hint over background finds nothing.
    box = everywhere[1].bbox
    assert len(buffalo_sc.detector.detect_in_regions(img, [box, box + 5])) == 1
    assert buffalo_sc.detector.detect_in_regions(img, [[0, 0, 60, 60]]) == []


def test_cuda_requested_without_cuda_falls_back_to_cpu_with_a_log_line(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback cannot happen here")
    settings = load_settings(models_dir=models_dir, inference_device="cuda", ort_intra_op_threads=1)
    embedder = create_embedder(settings, "buffalo_sc")
    with caplog.at_level(logging.WARNING, logger="facepipe.models"):
        embedder.load()
    assert embedder.loaded_provider == CPU
    assert any("INFERENCE_DEVICE=cuda" in r.getMessage() and "falling back to CPU" in r.getMessage()
               for r in caplog.records)


def test_provider_preference_order() -> None:
    assert select_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]
    assert select_providers("cpu", [CUDA, CPU]) == [CPU]
    assert select_providers("auto", [CPU]) == [CPU]


def test_models_refuse_work_before_load_and_name_the_fix_when_missing(
    models_dir: Path, tmp_path: Path
) -> None:
    settings = load_settings(models_dir=models_dir)
    detector = create_detector(settings, "buffalo_sc")
    with pytest.raises(ModelNotLoadedError):
        detector.detect(np.zeros((10, 10, 3), np.uint8))
    missing = create_detector(load_settings(models_dir=tmp_path), "buffalo_l")
    with pytest.raises(FileNotFoundError, match="buffalo_l"):
        missing.load()


def test_wrong_crop_shape_is_a_clear_error(buffalo_sc) -> None:
    with pytest.raises(ValueError, match="112, 112, 3"):
        buffalo_sc.embedder.embed([np.zeros((100, 100, 3), np.uint8)])


def test_detection_threshold_is_the_packs_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DET_THRESHOLD", raising=False)
    yunet = get_pack("opencv_yunet_sface")
    assert detection_threshold(load_settings(), yunet) == yunet.default_det_threshold == 0.8
    monkeypatch.setenv("DET_THRESHOLD", "0.6")
    assert detection_threshold(load_settings(), yunet) == 0.6


def test_message_model_info_names_pack_version_and_files() -> None:
    pack = get_pack("buffalo_sc")
    assert pack.embedder_info() == {
        "pack": "buffalo_sc", "version": pack.version, "detector": "scrfd_500m_bnkps.onnx",
        "recognizer": "w600k_mbf.onnx", "dim": 512,
    }


def test_patched_sface_has_a_dynamic_batch_and_one_input(models_dir: Path) -> None:
    pack = get_pack("opencv_yunet_sface")
    graph = onnx.load(str(pack.recognizer_path(models_dir))).graph
    assert [value.name for value in graph.input] == ["data"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_sface_matches_opencvs_own_face_recognizer(photos: dict[str, np.ndarray], yunet_sface) -> None:
    """OpenCV's FaceRecognizerSF is SFace's reference: same crop, same vector; same alignment."""
    import cv2

    img = photos["obama_1.jpg"]
    detection = yunet_sface.detector.detect(img)[0]
    crop = align_face(img, detection.kps)
    reference = cv2.FaceRecognizerSF.create(str(yunet_sface.embedder.path), "")
    expected = reference.feature(crop).flatten()
    expected /= np.linalg.norm(expected)
    assert float(yunet_sface.embedder.embed([crop])[0] @ expected) > 0.9999

    x1, y1, x2, y2 = detection.bbox
    face_row = np.array([x1, y1, x2 - x1, y2 - y1, *detection.kps.flatten(), detection.score], np.float32)
    opencv_crop = reference.alignCrop(img, face_row)
    assert np.abs(opencv_crop.astype(int) - crop.astype(int)).mean() < 0.05


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1126, 661, (640, 384)), (661, 1126, (384, 640)), (640, 640, (640, 640)), (3000, 40, (640, 32))],
)
def test_detector_input_keeps_the_images_aspect_ratio(
    width: int, height: int, expected: tuple[int, int]
) -> None:
    from facepipe.vision.models.detectors import aspect_input_size

    size = aspect_input_size(width, height, 640)
    assert size == expected
    assert size[0] % 32 == 0 and size[1] % 32 == 0
    # The image fits inside the input at the letterbox scale (longer side = DET_SIZE).
    scale = 640 / max(width, height)
    assert width * scale <= size[0] and height * scale <= size[1]
