"""Settings of what the pipeline talks to and runs: object storage, the vector store, the models,
the quality gates, the ops-api."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from facepipe.core.settings.common import SettingsBase, default_models_dir, env_names


class ServiceSettings(SettingsBase):
    # --- Object storage (Phase 3: MinIO API) ---
    minio_endpoint: str = Field(
        "localhost:9000",
        min_length=1,
        validation_alias=env_names("MINIO_ENDPOINT"),
        description="S3 endpoint host:port (MinIO, SeaweedFS, AWS)",
    )
    minio_access_key: str = Field(
        "minioadmin", validation_alias=env_names("MINIO_ACCESS_KEY"), description="S3 access key"
    )
    minio_secret_key: str = Field(
        "minioadmin", validation_alias=env_names("MINIO_SECRET_KEY"), description="S3 secret key"
    )
    minio_secure: bool = Field(
        False, validation_alias=env_names("MINIO_SECURE"), description="use HTTPS to S3"
    )
    bucket_raw: str = Field(
        "raw-images",
        min_length=3,
        max_length=63,
        validation_alias=env_names("BUCKET_RAW"),
        description="bucket of crawled images (ingest messages point into it)",
    )
    bucket_crops: str = Field(
        "face-crops",
        min_length=3,
        max_length=63,
        validation_alias=env_names("BUCKET_CROPS"),
        description="bucket of aligned 112×112 face crops",
    )
    bucket_thumbs: str = Field(
        "face-thumbs",
        min_length=3,
        max_length=63,
        validation_alias=env_names("BUCKET_THUMBS"),
        description="bucket of face thumbnails",
    )
    bucket_metadata: str = Field(
        "face-metadata",
        min_length=3,
        max_length=63,
        validation_alias=env_names("BUCKET_METADATA"),
        description="bucket of per-face metadata JSON",
    )

    # --- Vector database (Phase 3) ---
    # Unset or "embedded": Qdrant Edge in-process at QDRANT_PATH (one process per folder).
    qdrant_url: str = Field(
        "embedded",
        validation_alias=env_names("QDRANT_URL"),
        description="Qdrant server URL; empty or `embedded`: the embedded store (Qdrant Edge) at QDRANT_PATH",
    )
    qdrant_api_key: str = Field(
        "", validation_alias=env_names("QDRANT_API_KEY"), description="Qdrant API key (server mode)"
    )
    qdrant_collection: str = Field(
        "faces_v1",
        min_length=1,
        validation_alias=env_names("QDRANT_COLLECTION"),
        description="collection of face vectors",
    )
    qdrant_path: Path = Field(
        Path("data/qdrant"),
        validation_alias=env_names("QDRANT_PATH"),
        description="directory of the embedded vector store (one process may open it)",
    )

    # --- Models ---
    model_pack: Literal["buffalo_sc", "buffalo_l", "opencv_yunet_sface"] = Field(
        "buffalo_sc",
        validation_alias=env_names("MODEL_PACK"),
        description="detector + recognizer pair (see Models)",
    )
    models_dir: Path = Field(
        default_factory=default_models_dir,
        validation_alias=env_names("MODELS_DIR"),
        description="where `make models` puts model files and services load them",
    )
    inference_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        validation_alias=env_names("INFERENCE_DEVICE"),
        description="auto: CUDA when onnxruntime has it, else CPU; cuda without CUDA: CPU, logged",
    )
    ort_intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        validation_alias=env_names("ORT_INTRA_OP_THREADS"),
        description="onnxruntime intra-op threads; 0: onnxruntime's default",
    )
    det_size: int = Field(
        640,
        ge=128,
        le=2048,
        validation_alias=env_names("DET_SIZE"),
        description="detector input: longer image side scaled to this (aspect kept where the graph allows)",
    )
    det_threshold: float = Field(
        0.5, gt=0, lt=1, validation_alias=env_names("DET_THRESHOLD"), description="detector score threshold"
    )
    embed_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        validation_alias=env_names("EMBED_BATCH_SIZE"),
        description="faces per embedding inference call (batches span messages)",
    )
    embed_max_wait_ms: int = Field(
        50,
        ge=0,
        le=10_000,
        validation_alias=env_names("EMBED_MAX_WAIT_MS"),
        description="longest wait for more faces when a read brings fewer than EMBED_BATCH_SIZE; "
        "0: embed what one read returns at once",
    )

    # --- Quality gates (detector) ---
    min_face_size: int = Field(
        20,
        ge=1,
        le=4096,
        validation_alias=env_names("MIN_FACE_SIZE"),
        description="quality gate: smaller faces (shorter bbox side, px) are rejected",
    )
    min_det_score: float = Field(
        0.5,
        ge=0,
        le=1,
        validation_alias=env_names("MIN_DET_SCORE"),
        description="quality gate: lower detection scores are rejected",
    )
    min_blur_variance: float = Field(
        15.0,
        ge=0,
        validation_alias=env_names("MIN_BLUR_VARIANCE"),
        description="quality gate: Laplacian variance of the aligned crop below this is blurry",
    )
    max_pose_ratio: float = Field(
        3.0,
        ge=1,
        validation_alias=env_names("MAX_POSE_RATIO"),
        description="quality gate: landmark asymmetry ratio above this is an extreme pose",
    )
    max_image_bytes: int = Field(
        50 * 1024 * 1024,
        ge=1024,
        validation_alias=env_names("MAX_IMAGE_BYTES"),
        description="images larger than this are refused before download completes",
    )
    max_image_pixels: int = Field(
        60_000_000,
        ge=1,
        validation_alias=env_names("MAX_IMAGE_PIXELS"),
        description="decompression-bomb guard: width×height limit read from the header",
    )
    max_image_side: int = Field(
        16_384,
        ge=16,
        validation_alias=env_names("MAX_IMAGE_SIDE"),
        description="longest image side allowed, read from the header",
    )

    # --- ops-api ---
    ops_api_host: str = Field(
        "127.0.0.1", validation_alias=env_names("OPS_API_HOST"), description="ops-api bind address"
    )
    ops_api_port: int = Field(
        8001, ge=1, le=65535, validation_alias=env_names("OPS_API_PORT"), description="ops-api port"
    )
    ops_api_token: str = Field(
        "",
        validation_alias=env_names("OPS_API_TOKEN"),
        description="when set, mutating endpoints need `Authorization: Bearer <token>`",
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        validation_alias=env_names("MAX_UPLOAD_BYTES"),
        description="largest /search upload",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=env_names("LOG_LEVEL"), description="DEBUG, INFO, WARNING or ERROR"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _distinct_buckets(self) -> Self:
        # One bucket for two roles would overwrite objects (crops == thumbs: every crop replaced
        # by its thumbnail) and make deletion of one role's prefix delete the other's.
        seen: dict[str, str] = {}
        for env_name, bucket in (
            ("BUCKET_RAW", self.bucket_raw),
            ("BUCKET_CROPS", self.bucket_crops),
            ("BUCKET_THUMBS", self.bucket_thumbs),
            ("BUCKET_METADATA", self.bucket_metadata),
        ):
            if bucket in seen:
                raise ValueError(
                    f"{seen[bucket]} and {env_name} are both {bucket!r}: the four buckets must be distinct "
                    "(one bucket for two roles would overwrite or delete the other's objects)"
                )
            seen[bucket] = env_name
        return self

    @property
    def qdrant_embedded(self) -> bool:
        return self.qdrant_url.strip().lower() in {"", "embedded"}
