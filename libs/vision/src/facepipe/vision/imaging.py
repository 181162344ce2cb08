"""Pure image functions of the detector stage: safe decode, alignment, quality, pHash, JPEG.

Images are numpy arrays in OpenCV's layout: H x W x 3, uint8, BGR.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facepipe.core.errors import PermanentError

if TYPE_CHECKING:
    from facepipe.core.settings import Settings

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})

# ArcFace's 5-point template for a 112x112 crop (insightface.utils.face_align.arcface_dst):
# left eye, right eye (as seen in the image), nose tip, left and right mouth corners.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
CROP_SIZE = 112


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    max_side: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageLimits:
        return cls(settings.max_image_bytes, settings.max_image_pixels, settings.max_image_side)


# File signatures: what a file claims to be, for telling a damaged image from a file that is no
# image at all when the decoder cannot even read the header.
_SUPPORTED_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG (WebP: RIFF....WEBP)
# ISO-BMFF brands of image formats the decoder does not read (HEIC/HEIF, AVIF) at offset 8.
_UNSUPPORTED_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")
_JPEG_XL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")


def _claimed_format(data: bytes) -> str | None:
    """``"supported"`` or ``"unsupported"`` when the first bytes are an image signature, else None."""
    if data.startswith(_SUPPORTED_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "supported"
    if (data[4:8] == b"ftyp" and data[8:12] in _UNSUPPORTED_BRANDS) or data.startswith(_JPEG_XL_SIGNATURES):
        return "unsupported"
    return None


def decode_image(data: bytes, limits: ImageLimits) -> np.ndarray:
    """Decode JPEG/PNG/WebP bytes to BGR, EXIF orientation applied.

    The size is read from the header before any pixel is decoded, so a
    decompression bomb (a small file claiming a huge canvas) is refused without
    allocating it. Raises ``PermanentError`` with a reason that tells the cases apart:
    ``image_too_large`` (more than MAX_IMAGE_BYTES), ``too_many_pixels`` (MAX_IMAGE_PIXELS or
    MAX_IMAGE_SIDE), ``unsupported_image_format`` (an image, but GIF, BMP, HEIC, ...),
    ``corrupt_image`` (a JPEG/PNG/WebP that is truncated or damaged) or ``not_an_image``
    (text, HTML, PDF, empty: no image at all).
    """
    if len(data) > limits.max_bytes:
        raise PermanentError("image_too_large", f"image is {len(data)} bytes, limit {limits.max_bytes}")
    try:
        image = Image.open(io.BytesIO(data))  # lazy: parses the header only
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, far above ours by default
        raise PermanentError("too_many_pixels", str(exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _unreadable(data, exc) from None
    with image:
        if image.format not in SUPPORTED_FORMATS:
            raise PermanentError(
                "unsupported_image_format", f"{image.format} image; supported: JPEG, PNG, WebP"
            )
        width, height = image.size
        if width < 1 or height < 1:
            raise PermanentError("corrupt_image", f"{image.format} header claims {width}x{height} pixels")
        if max(width, height) > limits.max_side or width * height > limits.max_pixels:
            raise PermanentError(
                "too_many_pixels",
                f"{width}x{height} exceeds MAX_IMAGE_SIDE={limits.max_side} or "
                f"MAX_IMAGE_PIXELS={limits.max_pixels}",
            )
        try:
            image.load()  # a truncated file raises here (Pillow refuses truncated images by default)
            # exif_transpose copies the whole image even when there is nothing to rotate.
            rotated = image.getexif().get(EXIF_ORIENTATION, 1) != 1
            oriented = ImageOps.exif_transpose(image) if rotated else image
            rgb = _to_rgb(oriented)
        except Image.DecompressionBombError as exc:
            raise PermanentError("too_many_pixels", str(exc)) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise PermanentError(
                "corrupt_image", f"{image.format} image is truncated or damaged: {exc}"
            ) from None
    # One copy RGB -> BGR (OpenCV's order) instead of a reversed view plus a contiguous copy.
    return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)


def _unreadable(data: bytes, exc: BaseException) -> PermanentError:
    """Why a file whose header the decoder cannot read is refused."""
    claimed = _claimed_format(data)
    if claimed == "supported":
        return PermanentError("corrupt_image", f"image header is truncated or damaged: {exc}")
    if claimed == "unsupported":
        return PermanentError(
            "unsupported_image_format", "HEIC/AVIF/JPEG XL image; supported: JPEG, PNG, WebP"
        )
    what = "an empty file" if not data else f"{len(data)} bytes that are no image ({data[:16]!r}...)"
    return PermanentError("not_an_image", f"not an image: {what}")


EXIF_ORIENTATION = 0x0112


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        # 16-bit greyscale: convert("RGB") would clip instead of scaling.
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((wide >> 8).clip(0, 255).astype(np.uint8), mode="L")
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels over white, as a browser shows them, not over black.
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src onto dst.

    Umeyama's method, the same estimate as skimage's SimilarityTransform that
    insightface's ``norm_crop`` uses. Returns a 2x3 affine matrix.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[-1] = -1
    rotation = u @ np.diag(sign) @ vt
    variance = src_c.var(axis=0).sum()
    scale = (singular * sign).sum() / variance if variance > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def align_face(img: np.ndarray, kps: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp a face to the ArcFace 112x112 layout from its 5 landmarks."""
    template = ARCFACE_TEMPLATE * (size / CROP_SIZE)
    matrix = similarity_transform(np.asarray(kps, dtype=np.float32).reshape(5, 2), template)
    return cv2.warpAffine(img, matrix, (size, size), borderValue=0.0)


@dataclass(frozen=True)
class QualityThresholds:
    min_face_size: int
    min_det_score: float
    min_blur_variance: float
    max_pose_ratio: float

    @classmethod
    def from_settings(cls, settings: Settings) -> QualityThresholds:
        return cls(settings.min_face_size, settings.min_det_score, settings.min_blur_variance,
                   settings.max_pose_ratio)


@dataclass(frozen=True)
class Quality:
    size: int          # shorter side of the detection box, pixels
    det_score: float
    blur_var: float    # variance of the Laplacian of the aligned crop: low = blurry
    pose_ratio: float  # 1 = frontal; grows as the nose moves towards one eye

    def as_dict(self) -> dict[str, float | int]:
        return {"blur_var": round(self.blur_var, 2), "pose_ratio": round(self.pose_ratio, 3),
                "size": self.size}


MAX_POSE_RATIO_REPORTED = 100.0


def blur_variance(crop: np.ndarray) -> float:
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY) if crop.ndim == 3 else crop
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pose_ratio(kps: np.ndarray) -> float:
    """How far the nose sits from the middle of the eyes, along the eye line.

    The nose projects to t in [0, 1] between the two eyes (0.5 when frontal);
    the ratio of the longer to the shorter part is 1 when frontal, 3 when the
    nose is at a quarter of the way, and capped at 100 when it leaves the span
    (a profile view).
    """
    points = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose = points[0], points[1], points[2]
    axis = right_eye - left_eye
    length_sq = float(axis @ axis)
    if length_sq < 1e-9:
        return MAX_POSE_RATIO_REPORTED
    t = float((nose - left_eye) @ axis / length_sq)
    shorter, longer = min(t, 1 - t), max(t, 1 - t)
    if shorter <= longer / MAX_POSE_RATIO_REPORTED:
        return MAX_POSE_RATIO_REPORTED
    return longer / shorter


def assess_quality(
    bbox: np.ndarray, kps: np.ndarray, det_score: float, crop: np.ndarray, thresholds: QualityThresholds
) -> tuple[Quality, str | None]:
    """Measure a detected face; return its quality and the rejection reason, if any.

    Reasons (the ``reason`` label of facepipe_faces_rejected_total):
    ``face_too_small``, ``low_det_score``, ``extreme_pose``, ``blurry``.
    """
    x1, y1, x2, y2 = (float(v) for v in bbox[:4])
    quality = Quality(
        size=round(min(x2 - x1, y2 - y1)),
        det_score=float(det_score),
        blur_var=blur_variance(crop),
        pose_ratio=pose_ratio(kps),
    )
    if quality.size < thresholds.min_face_size:
        return quality, "face_too_small"
    if quality.det_score < thresholds.min_det_score:
        return quality, "low_det_score"
    if quality.pose_ratio > thresholds.max_pose_ratio:
        return quality, "extreme_pose"
    if quality.blur_var < thresholds.min_blur_variance:
        return quality, "blurry"
    return quality, None


def phash64(img: np.ndarray) -> str:
    """64-bit DCT perceptual hash as 16 hex digits.

    Greyscale, 32x32, 2-D DCT, the 8x8 lowest frequencies, each bit = coefficient
    above their median; row-major, first bit most significant (imagehash's phash).
    """
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8]
    bits = (low > np.median(low)).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:016x}"


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    ok, buffer = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buffer.tobytes()


MAX_CROP_SIDE = 1024  # crops are CROP_SIZE; anything far larger is not one of ours


def decode_jpeg(data: bytes, max_side: int = MAX_CROP_SIDE) -> np.ndarray:
    """Decode a face crop from a stream message, or raise ``PermanentError("undecodable_crop")``.

    The bytes come from a stream anyone with Redis access can write to: the header's size
    is checked before decoding, so a crop claiming 20,000x20,000 pixels is refused instead
    of allocating gigabytes (or tripping OpenCV's own pixel limit with a cv2.error).
    """
    try:
        with Image.open(io.BytesIO(data)) as header:  # lazy: parses the header only
            width, height = header.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise PermanentError("undecodable_crop", "face crop is not a readable image") from None
    if not (1 <= width <= max_side and 1 <= height <= max_side):
        raise PermanentError(
            "undecodable_crop", f"face crop claims {width}x{height} pixels (at most {max_side})"
        )
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise PermanentError("undecodable_crop", f"face crop does not decode: {exc}") from None
    if img is None:
        raise PermanentError("undecodable_crop", "face crop JPEG does not decode")
    return img
