"""facepipe.vision.imaging on real photos and on crafted bad input."""

from __future__ import annotations

import io
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from imagekit import png_header_only
from PIL import Image

from facepipe.core.errors import PermanentError
from facepipe.vision.imaging import (
    ImageLimits,
    QualityThresholds,
    align_face,
    assess_quality,
    decode_image,
    encode_jpeg,
    phash64,
    pose_ratio,
)

LIMITS = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=60_000_000, max_side=16_384)
THRESHOLDS = QualityThresholds(
    min_face_size=20, min_det_score=0.5, min_blur_variance=15.0, max_pose_ratio=3.0
)


def reason_of(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(PermanentError) as caught:
        decode_image(data, limits)
    return caught.value.reason


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def test_decodes_jpeg_png_and_webp_to_the_same_bgr_pixels(faces_dir: Path) -> None:
    raw = (faces_dir / "lin_manuel_miranda.png").read_bytes()
    reference = decode_image(raw, LIMITS)
    rgb = Image.open(io.BytesIO(raw)).convert("RGB")
    assert reference.shape == (rgb.height, rgb.width, 3) and reference.dtype == np.uint8
    # BGR: the first channel is PIL's blue.
    assert np.array_equal(reference[..., 0], np.asarray(rgb)[..., 2])
    for fmt in ("WEBP", "JPEG"):
        buffer = io.BytesIO()
        rgb.save(buffer, format=fmt, quality=95)
        decoded = decode_image(buffer.getvalue(), LIMITS)
        assert decoded.shape == reference.shape
        assert np.abs(decoded.astype(int) - reference.astype(int)).mean() < 4, fmt


def test_exif_orientation_is_applied(faces_dir: Path) -> None:
    original = Image.open(faces_dir / "obama_1.jpg").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    original.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(buffer.getvalue(), LIMITS)
    assert decoded.shape[:2] == (original.width, original.height)
    upright = np.asarray(original.transpose(Image.Transpose.ROTATE_270))[..., ::-1]
    assert np.abs(decoded.astype(int) - upright.astype(int)).mean() < 4


def test_truncated_or_damaged_images_are_corrupt(faces_dir: Path) -> None:
    data = (faces_dir / "obama_2.jpg").read_bytes()
    png = io.BytesIO()
    Image.open(faces_dir / "obama_2.jpg").save(png, format="PNG")
    assert reason_of(data[: len(data) // 2]) == "corrupt_image"
    assert reason_of(data[:3]) == "corrupt_image"  # a JPEG signature and nothing after it
    assert reason_of(png.getvalue()[:40]) == "corrupt_image"  # a PNG cut inside its header


@pytest.mark.parametrize(
    "data",
    [
        b"this is not an image, just text in a file called photo.jpg\n" * 5,
        b"<!doctype html><html><body>404 not found</body></html>",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        b"",
    ],
    ids=["text", "html", "pdf", "empty"],
)
def test_a_file_that_is_no_image_is_not_an_image(data: bytes) -> None:
    assert reason_of(data) == "not_an_image"


@pytest.mark.parametrize(
    "header",
    [
        b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1",
    ],
    ids=["heic", "avif"],
)
def test_images_in_formats_the_decoder_cannot_read_are_unsupported(header: bytes) -> None:
    assert reason_of(header + bytes(200)) == "unsupported_image_format"


def test_huge_png_header_is_refused_without_decoding() -> None:
    bomb = png_header_only(20_000, 20_000)
    assert len(bomb) < 200
    started = time.perf_counter()
    assert reason_of(bomb) == "too_many_pixels"
    # Refused from the header: decoding 400 megapixels would take seconds and 1.2 GB.
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("width", "height", "limits"),
    [
        (5_000, 5_000, ImageLimits(max_bytes=10**6, max_pixels=10_000_000, max_side=16_384)),  # pixels
        (20_000, 10, ImageLimits(max_bytes=10**6, max_pixels=60_000_000, max_side=16_384)),  # one side
    ],
)
def test_our_limits_apply_below_pillows_own(width: int, height: int, limits: ImageLimits) -> None:
    assert reason_of(png_header_only(width, height), limits) == "too_many_pixels"


def test_too_many_bytes_is_too_large(faces_dir: Path) -> None:
    data = (faces_dir / "obama_3.jpg").read_bytes()
    assert reason_of(data, ImageLimits(max_bytes=len(data) - 1, max_pixels=10**9, max_side=10**5)) == (
        "image_too_large"
    )


def test_other_formats_are_refused_by_name() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, format="GIF")
    assert reason_of(buffer.getvalue()) == "unsupported_image_format"


def test_transparent_png_is_composited_on_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, format="PNG")
    assert (decode_image(buffer.getvalue(), LIMITS) == 255).all()


def test_align_face_matches_insightface_norm_crop(photos: dict[str, np.ndarray], buffalo_sc) -> None:
    import warnings

    from insightface.utils.face_align import norm_crop

    img = photos["two_people.jpg"]
    for detection in buffalo_sc.detector.detect(img):
        ours = align_face(img, detection.kps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # skimage deprecation inside insightface
            theirs = norm_crop(img, detection.kps)
        assert ours.shape == (112, 112, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 2


def test_phash_is_stable_under_reencoding_and_differs_between_faces(
    photos: dict[str, np.ndarray], buffalo_sc
) -> None:
    crops = {}
    for name in ("obama_1.jpg", "biden_1.jpg"):
        detection = buffalo_sc.detector.detect(photos[name])[0]
        crops[name] = align_face(photos[name], detection.kps)
    obama = phash64(crops["obama_1.jpg"])
    assert len(obama) == 16 and int(obama, 16) >= 0
    assert phash64(crops["obama_1.jpg"]) == obama
    reencoded = cv2.imdecode(np.frombuffer(encode_jpeg(crops["obama_1.jpg"], 70), np.uint8), cv2.IMREAD_COLOR)
    assert hamming(phash64(reencoded), obama) <= 4
    assert hamming(phash64(crops["biden_1.jpg"]), obama) > 12


def test_phash_bits_follow_the_dct_median() -> None:
    # A left-bright / right-dark image: its low-frequency DCT has a strong first
    # horizontal coefficient; the hash must not be all zeros or all ones.
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :32] = 255
    value = phash64(img)
    assert value not in {"0" * 16, "f" * 16}
    assert phash64(img[:, ::-1].copy()) != value


def test_pose_ratio_frontal_and_profile() -> None:
    frontal = np.array([[40, 50], [70, 50], [55, 70], [42, 90], [68, 90]], np.float32)
    assert pose_ratio(frontal) == pytest.approx(1.0)
    turned = frontal.copy()
    turned[2, 0] = 46  # nose at 1/5 of the way between the eyes
    assert pose_ratio(turned) == pytest.approx(4.0)
    profile = frontal.copy()
    profile[2, 0] = 30  # nose outside the eyes
    assert pose_ratio(profile) == 100.0


def test_quality_reasons(photos: dict[str, np.ndarray], buffalo_sc) -> None:
    img = photos["obama_1.jpg"]
    detection = buffalo_sc.detector.detect(img)[0]
    crop = align_face(img, detection.kps)
    quality, reason = assess_quality(detection.bbox, detection.kps, detection.score, crop, THRESHOLDS)
    assert reason is None
    assert quality.size > 50 and quality.pose_ratio < 2 and quality.blur_var > THRESHOLDS.min_blur_variance

    tiny = np.array([10, 10, 25, 28], np.float32)
    assert assess_quality(tiny, detection.kps, detection.score, crop, THRESHOLDS)[1] == "face_too_small"
    assert assess_quality(detection.bbox, detection.kps, 0.3, crop, THRESHOLDS)[1] == "low_det_score"
    blurred = cv2.GaussianBlur(crop, (0, 0), 6)
    assert assess_quality(detection.bbox, detection.kps, detection.score, blurred, THRESHOLDS)[1] == "blurry"
    profile = detection.kps.copy()
    profile[2, 0] = profile[0, 0] - 5
    assert assess_quality(detection.bbox, profile, detection.score, crop, THRESHOLDS)[1] == "extreme_pose"
