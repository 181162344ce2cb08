"""What the indexer makes of a message's faces before storing them: checked vectors, crop and
thumbnail bytes, the point payload. Everything here is pure and raises PermanentError for a
message that can never be indexed, so a bad message is refused before any store is touched."""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from facepipe.core.errors import PermanentError
from facepipe.core.messages import EmbeddedFace, EmbeddedMessage
from facepipe.core.settings import Settings
from facepipe.store.storage import ArtifactKeys

THUMB_SIZE = 64
MAX_CROP_SIDE = 1024  # crops are 112x112; anything far larger is not one of ours
# A stored embedding must be unit length (cosine); allow float32 rounding and re-normalise.
NORM_TOLERANCE = 1e-2


def decode_embedding(face: EmbeddedFace, dim: int) -> np.ndarray:
    """The face's embedding as a unit float32 vector of ``dim``, or PermanentError("invalid_embedding")."""
    try:
        raw = base64.b64decode(face.embedding_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError(
            "invalid_embedding", f"face {face.index}: embedding_b64 is not base64: {exc}"
        ) from None
    if len(raw) != 4 * dim:
        raise PermanentError(
            "invalid_embedding",
            f"face {face.index}: embedding has {len(raw)} bytes, expected {4 * dim} ({dim} x f32)",
        )
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.all(np.isfinite(vector)) or abs(norm - 1.0) > NORM_TOLERANCE:
        raise PermanentError(
            "invalid_embedding",
            f"face {face.index}: embedding must be finite and L2-normalised (norm {norm:.4f})",
        )
    return vector / norm


def decode_crop(face: EmbeddedFace) -> bytes:
    try:
        return base64.b64decode(face.crop_jpeg_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError(
            "undecodable_crop", f"face {face.index}: crop_jpeg_b64 is not base64: {exc}"
        ) from None


def thumbnail_jpeg(crop_jpeg: bytes, size: int = THUMB_SIZE) -> bytes:
    """A ``size`` x ``size`` JPEG of the aligned crop; PermanentError("undecodable_crop") if it is no image.

    The crop comes from a stream anyone with Redis access can write to: the header's size is
    checked before decoding, so a crop claiming 20,000x20,000 pixels is refused, never allocated.
    """
    try:
        with Image.open(io.BytesIO(crop_jpeg)) as crop:  # lazy: parses the header only
            width, height = crop.size
            oversized = not (1 <= width <= MAX_CROP_SIDE and 1 <= height <= MAX_CROP_SIDE)
            thumb = None if oversized else crop.convert("RGB").resize((size, size), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise PermanentError("undecodable_crop", "face crop is not a readable image") from None
    if thumb is None:
        raise PermanentError(
            "undecodable_crop", f"face crop claims {width}x{height} pixels (at most {MAX_CROP_SIDE})"
        )
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85)
    return out.getvalue()


def face_payload(
    settings: Settings, parsed: EmbeddedMessage, face: EmbeddedFace, keys: ArtifactKeys, created_at: str
) -> dict[str, Any]:
    """The Qdrant point payload of one face (also the core of its metadata JSON)."""
    ingest = parsed.ingest
    return {
        "tenant_id": ingest.tenant_id,
        "site": ingest.site,
        "url": ingest.url,
        "image_sha256": ingest.image_sha256,
        "face_index": face.index,
        "bbox": face.bbox,
        "det_score": face.det_score,
        "quality": face.quality.model_dump(),
        "phash": face.phash,
        "phash_prefix": face.phash[:4],
        "model_pack": parsed.model.pack,
        "model": parsed.model.model_dump(),
        "source": {"bucket": ingest.bucket, "key": ingest.key},
        "artifacts": {
            "crop": {"bucket": settings.bucket_crops, "key": keys.crop},
            "thumb": {"bucket": settings.bucket_thumbs, "key": keys.thumb},
            "metadata": {"bucket": settings.bucket_metadata, "key": keys.metadata},
        },
        "created_at": created_at,
    }


def json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
