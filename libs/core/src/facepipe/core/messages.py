"""The messages on the pipeline's streams (docs/design.md "Messages").

- :class:`IngestMessage` — the Phase 3 producer message, docs/compatibility.md (no version field).
- :class:`DetectedMessage` (``v: 1``) — detector → embedder: faces with aligned crops.
- :class:`EmbeddedMessage` (``v: 1``) — embedder → indexer: the same plus embeddings.

:func:`parse_message` validates a decoded payload and turns pydantic's
``ValidationError`` into a :class:`PermanentError` the worker dead-letters:
reason ``missing_fields`` (``.fields`` lists them) or ``invalid_fields``.

Every field that ends up in a storage key or a Redis key is checked here, so a
message can never address another tenant's data: ``tenant_id`` through
:mod:`facepipe.core.tenancy`, ``image_sha256`` without ``/``, ``:`` or dots, and
``key`` never absolute nor with ``..`` segments.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from facepipe.core.errors import PermanentError
from facepipe.core.tenancy import is_valid_tenant_id

# The Phase 3 example (docs/compatibility.md) uses "abc123def456", so any short token is accepted, not
# only 64 hex digits; the character set keeps it safe inside keys and object paths.
IMAGE_ID_PATTERN = r"^[0-9A-Za-z_-]{1,128}$"
# S3 bucket naming rules (what MinIO enforces), so a bad bucket fails here, clearly.
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PHASH_PATTERN = r"^[0-9a-f]{16}$"
MAX_FACE_HINTS = 100

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
BBox = Annotated[list[FiniteFloat], Field(min_length=4, max_length=4)]
Point = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]


class FaceHint(BaseModel):
    model_config = ConfigDict(extra="ignore")

    bbox: BBox
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None


class IngestMessage(BaseModel):
    """What a producer XADDs (JSON in field ``message``, legacy ``data``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    image_sha256: str = Field(pattern=IMAGE_ID_PATTERN)
    bucket: str = Field(pattern=BUCKET_PATTERN)
    key: str = Field(min_length=1, max_length=1024)
    tenant_id: str
    site: str = ""
    url: str = ""
    image_phash: str | None = Field(None, max_length=64)  # "can be placeholder": not checked further
    # Each hint costs one detector pass: bounded, so one message cannot stall a detector for minutes.
    face_hints: Annotated[list[FaceHint], Field(max_length=MAX_FACE_HINTS)] | None = None

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if not is_valid_tenant_id(value):
            raise ValueError(
                "must be 1-63 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit, without '..'"
            )
        return value

    @field_validator("bucket")
    @classmethod
    def _s3_bucket(cls, value: str) -> str:
        # The rest of S3's naming rules (the pattern covers characters and length); the S3
        # client refuses these names before any request is sent.
        if any(pair in value for pair in ("..", ".-", "-.")):
            raise ValueError("must not contain '..', '.-' or '-.'")
        if re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", value):
            raise ValueError("must not be formatted as an IP address")
        return value

    @field_validator("key")
    @classmethod
    def _safe_key(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if value.startswith("/") or "\x00" in value:
            raise ValueError("must be a relative object key (no leading '/', no NUL)")
        if any(segment in {".", ".."} for segment in value.replace("\\", "/").split("/")):
            # ".." could escape a prefix; S3 clients refuse "." segments too (minio raises ValueError).
            raise ValueError("must not contain '.' or '..' path segments")
        return value

    @field_validator("site", "url", mode="before")
    @classmethod
    def _none_is_empty(cls, value: object) -> object:
        return "" if value is None else value


class ImageInfo(BaseModel):
    width: int = Field(ge=1)
    height: int = Field(ge=1)


class SourceRef(BaseModel):
    """The ingest stream entry an image came in with: the dedup owner's "event".

    A redelivery keeps it (so the face is re-indexed, not skipped as its own duplicate);
    a new ingest of the same image gets a new one (so it is skipped as a duplicate).
    """

    stream: str
    id: str = Field(pattern=r"^\d+-\d+$")


class DetectionModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    pack: str
    detector: str

    @model_validator(mode="after")
    def _extras_are_json(self) -> DetectionModelInfo:
        # Extra fields travel on into stream messages, S3 metadata and Qdrant payloads, all
        # strict JSON: a NaN or Infinity here would fail every write of the message downstream.
        try:
            json.dumps(self.model_extra or {}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"extra fields must be plain JSON without NaN or Infinity: {exc}") from None
        return self


class EmbeddingModelInfo(DetectionModelInfo):
    recognizer: str
    dim: int = Field(ge=1)


class FaceQuality(BaseModel):
    blur_var: FiniteFloat
    pose_ratio: FiniteFloat
    size: FiniteFloat


class DetectedFace(BaseModel):
    index: int = Field(ge=0)  # index among all detections of the image: stable across redelivery
    bbox: BBox
    landmarks: Annotated[list[Point], Field(min_length=5, max_length=5)]
    det_score: FiniteFloat
    quality: FaceQuality
    phash: str = Field(pattern=PHASH_PATTERN)
    crop_jpeg_b64: str = Field(min_length=1)


class EmbeddedFace(DetectedFace):
    embedding_b64: str = Field(min_length=1)  # little-endian float32, L2-normalised


class RejectedFace(BaseModel):
    index: int = Field(ge=0)
    reason: str


class DetectedMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    v: Literal[1] = 1
    ingest: IngestMessage
    source: SourceRef | None = None
    image: ImageInfo
    model: DetectionModelInfo
    faces: list[DetectedFace] = Field(default_factory=list)
    rejected: list[RejectedFace] = Field(default_factory=list)
    timings_ms: dict[str, FiniteFloat] = Field(default_factory=dict)


class EmbeddedMessage(DetectedMessage):
    model: EmbeddingModelInfo
    faces: list[EmbeddedFace] = Field(default_factory=list)


M = TypeVar("M", bound=BaseModel)


def parse_message(model: type[M], payload: Any) -> M:
    """Validate ``payload`` as ``model`` or raise the :class:`PermanentError` the DLQ records."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _permanent_from(exc) from None


def _permanent_from(exc: ValidationError) -> PermanentError:
    errors = exc.errors(include_url=False)
    missing = [_dotted(err["loc"]) for err in errors if err["type"] == "missing"]
    if missing:
        return PermanentError(
            "missing_fields", f"missing required fields: {', '.join(missing)}", fields=tuple(missing)
        )
    invalid = list(dict.fromkeys(_dotted(err["loc"]) or "message" for err in errors))
    details = "; ".join(
        f"{_dotted(err['loc']) or 'message'}: {err['msg'].removeprefix('Value error, ')}"
        for err in errors[:10]
    )
    return PermanentError("invalid_fields", f"invalid fields: {details}", fields=tuple(invalid))


def _dotted(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)
