"""Every setting of the pipeline, read from the environment.

Names are the Phase 3 primary names (docs/compatibility.md); its legacy aliases are accepted
too (``FACE_STREAM``, ``GLOBAL_DEDUP_TTL_SEC``, ...). ``AliasChoices`` tries the
names in order, so when both are set the primary name wins.

An invalid value stops start-up with one line that names the variable and what
it accepts (see :func:`load_settings`), never a pydantic traceback.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(primary: str, *aliases: str) -> AliasChoices:
    return AliasChoices(primary, *aliases)


# A stream's place in the pipeline: which stage reads it (detector, embedder, indexer).
StreamRole = Literal["ingest", "detected", "embedded"]
STREAM_ROLES: tuple[StreamRole, ...] = ("ingest", "detected", "embedded")


def default_models_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facepipe" / "models"


class Settings(BaseSettings):
    """Typed view of the environment. Field order follows the Phase 3 runbook's sections."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # --- Redis connection & streams (Phase 3) ---
    redis_url: str = Field(
        "redis://localhost:6379/0",
        validation_alias=_env("REDIS_URL"),
        description="Redis for streams, dedup cache and stats",
    )
    redis_stream_name: str = Field(
        "face-processing-queue",
        min_length=1,
        validation_alias=_env("REDIS_STREAM_NAME", "FACE_STREAM"),
        description="ingest stream the producer XADDs to",
    )
    redis_group_name: str = Field(
        "pipeline",
        min_length=1,
        validation_alias=_env("REDIS_GROUP_NAME", "FACE_GROUP"),
        description="consumer group, the same on every stream",
    )
    redis_consumer_name: str = Field(
        "",
        validation_alias=_env("REDIS_CONSUMER_NAME", "FACE_CONSUMER"),
        description="empty: pipe-{hostname}-{pid}",
    )
    # Streams between stages. Empty means derived from REDIS_STREAM_NAME.
    detected_stream_name: str = Field(
        "",
        validation_alias=_env("DETECTED_STREAM_NAME"),
        description="detector → embedder stream; empty: <ingest>:detected",
    )
    embedded_stream_name: str = Field(
        "",
        validation_alias=_env("EMBEDDED_STREAM_NAME"),
        description="embedder → indexer stream; empty: <ingest>:embedded",
    )

    # --- Dedup (Phase 3) ---
    enable_global_dedup: bool = Field(
        True,
        validation_alias=_env("ENABLE_GLOBAL_DEDUP", "GLOBAL_DEDUP_ENABLED"),
        description="near-duplicate face suppression on/off (off: nothing read or written)",
    )
    dedup_ttl_seconds: int = Field(
        3600,
        ge=1,
        le=365 * 24 * 3600,
        validation_alias=_env("DEDUP_TTL_SECONDS", "GLOBAL_DEDUP_TTL_SEC"),
        description="how long a remembered face pHash suppresses its near-duplicates",
    )
    dedup_max_hamming: int = Field(
        8,
        ge=0,
        le=64,
        validation_alias=_env("DEDUP_MAX_HAMMING", "GLOBAL_DEDUP_MAX_HAMMING"),
        description="largest Hamming distance between 64-bit pHashes counted as duplicate",
    )
    dedup_claim_ttl_seconds: int = Field(
        120,
        ge=1,
        le=24 * 3600,
        validation_alias=_env("DEDUP_CLAIM_TTL_SECONDS"),
        description="how long a face being indexed holds its pHash before it is confirmed "
        "(an indexer that dies mid-message leaves nothing behind after this)",
    )

    # --- Worker (Phase 3) ---
    max_worker_concurrency: int = Field(
        5,
        ge=1,
        le=256,
        validation_alias=_env("MAX_WORKER_CONCURRENCY"),
        description="messages processed at once inside one worker (download/decode threads)",
    )
    worker_batch_size: int = Field(
        10,
        ge=1,
        le=1000,
        validation_alias=_env("WORKER_BATCH_SIZE"),
        description="messages read per XREADGROUP (the --max-batch flag overrides)",
    )
    enable_queue_worker: bool = Field(
        True,
        validation_alias=_env("ENABLE_QUEUE_WORKER"),
        description="master switch: false makes a worker log why and exit 0",
    )
    read_block_ms: int = Field(
        2000,
        ge=1,
        le=60_000,
        validation_alias=_env("READ_BLOCK_MS"),
        description="XREADGROUP block time; --once returns after one empty block",
    )
    claim_idle_ms: int = Field(
        60_000,
        ge=100,
        le=86_400_000,
        validation_alias=_env("CLAIM_IDLE_MS"),
        description="pending entries idle this long are reclaimed from dead consumers (XCLAIM)",
    )
    max_deliveries: int = Field(
        5,
        ge=1,
        le=100,
        validation_alias=_env("MAX_DELIVERIES"),
        description="deliveries after which an entry is a poison pill and goes to the DLQ",
    )
    retry_backoff_initial_s: float = Field(
        0.5,
        gt=0,
        le=60,
        validation_alias=_env("RETRY_BACKOFF_INITIAL_S"),
        description="first back-off after a transient error (Redis/S3/Qdrant unreachable)",
    )
    retry_backoff_max_s: float = Field(
        30.0,
        gt=0,
        le=600,
        validation_alias=_env("RETRY_BACKOFF_MAX_S"),
        description="back-off ceiling; transient errors are retried forever, never DLQ'd",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        validation_alias=_env("METRICS_PORT"),
        description="port of the worker's Prometheus /metrics (and /healthz, /readyz); 0: off",
    )
    worker_stall_seconds: float = Field(
        300.0,
        gt=0,
        le=86_400,
        validation_alias=_env("WORKER_STALL_SECONDS"),
        description="a worker loop that has not come round for this long answers 503 on /healthz (restart)",
    )
    stream_retention_ms: int = Field(
        0,
        ge=-1,
        le=30 * 24 * 3600 * 1000,
        validation_alias=_env("STREAM_RETENTION_MS"),
        description="acked entries younger than this stay in a pipeline stream (for inspection); "
        "older ones are trimmed. 0: trimmed once acked; -1: never trimmed",
    )

    # --- Object storage (Phase 3: MinIO API) ---
    minio_endpoint: str = Field(
        "localhost:9000",
        min_length=1,
        validation_alias=_env("MINIO_ENDPOINT"),
        description="S3 endpoint host:port (MinIO, SeaweedFS, AWS)",
    )
    minio_access_key: str = Field(
        "minioadmin", validation_alias=_env("MINIO_ACCESS_KEY"), description="S3 access key"
    )
    minio_secret_key: str = Field(
        "minioadmin", validation_alias=_env("MINIO_SECRET_KEY"), description="S3 secret key"
    )
    minio_secure: bool = Field(False, validation_alias=_env("MINIO_SECURE"), description="use HTTPS to S3")
    bucket_raw: str = Field(
        "raw-images",
        min_length=3,
        max_length=63,
        validation_alias=_env("BUCKET_RAW"),
        description="bucket of crawled images (ingest messages point into it)",
    )
    bucket_crops: str = Field(
        "face-crops",
        min_length=3,
        max_length=63,
        validation_alias=_env("BUCKET_CROPS"),
        description="bucket of aligned 112×112 face crops",
    )
    bucket_thumbs: str = Field(
        "face-thumbs",
        min_length=3,
        max_length=63,
        validation_alias=_env("BUCKET_THUMBS"),
        description="bucket of face thumbnails",
    )
    bucket_metadata: str = Field(
        "face-metadata",
        min_length=3,
        max_length=63,
        validation_alias=_env("BUCKET_METADATA"),
        description="bucket of per-face metadata JSON",
    )

    # --- Vector database (Phase 3) ---
    # Unset or "embedded": Qdrant Edge in-process at QDRANT_PATH (one process per folder).
    qdrant_url: str = Field(
        "embedded",
        validation_alias=_env("QDRANT_URL"),
        description="Qdrant server URL; empty or `embedded`: the embedded store (Qdrant Edge) at QDRANT_PATH",
    )
    qdrant_api_key: str = Field(
        "", validation_alias=_env("QDRANT_API_KEY"), description="Qdrant API key (server mode)"
    )
    qdrant_collection: str = Field(
        "faces_v1",
        min_length=1,
        validation_alias=_env("QDRANT_COLLECTION"),
        description="collection of face vectors",
    )
    qdrant_path: Path = Field(
        Path("data/qdrant"),
        validation_alias=_env("QDRANT_PATH"),
        description="directory of the embedded vector store (one process may open it)",
    )

    # --- Models ---
    model_pack: Literal["buffalo_sc", "buffalo_l", "opencv_yunet_sface"] = Field(
        "buffalo_sc",
        validation_alias=_env("MODEL_PACK"),
        description="detector + recognizer pair (see Models)",
    )
    models_dir: Path = Field(
        default_factory=default_models_dir,
        validation_alias=_env("MODELS_DIR"),
        description="where `make models` puts model files and services load them",
    )
    inference_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        validation_alias=_env("INFERENCE_DEVICE"),
        description="auto: CUDA when onnxruntime has it, else CPU; cuda without CUDA: CPU, logged",
    )
    ort_intra_op_threads: int = Field(
        0,
        ge=0,
        le=256,
        validation_alias=_env("ORT_INTRA_OP_THREADS"),
        description="onnxruntime intra-op threads; 0: onnxruntime's default",
    )
    det_size: int = Field(
        640,
        ge=128,
        le=2048,
        validation_alias=_env("DET_SIZE"),
        description="detector input: longer image side scaled to this (aspect kept where the graph allows)",
    )
    det_threshold: float = Field(
        0.5, gt=0, lt=1, validation_alias=_env("DET_THRESHOLD"), description="detector score threshold"
    )
    embed_batch_size: int = Field(
        32,
        ge=1,
        le=1024,
        validation_alias=_env("EMBED_BATCH_SIZE"),
        description="faces per embedding inference call (batches span messages)",
    )
    embed_max_wait_ms: int = Field(
        50,
        ge=0,
        le=10_000,
        validation_alias=_env("EMBED_MAX_WAIT_MS"),
        description="longest wait for more faces when a read brings fewer than EMBED_BATCH_SIZE; "
        "0: embed what one read returns at once",
    )

    # --- Quality gates (detector) ---
    min_face_size: int = Field(
        20,
        ge=1,
        le=4096,
        validation_alias=_env("MIN_FACE_SIZE"),
        description="quality gate: smaller faces (shorter bbox side, px) are rejected",
    )
    min_det_score: float = Field(
        0.5,
        ge=0,
        le=1,
        validation_alias=_env("MIN_DET_SCORE"),
        description="quality gate: lower detection scores are rejected",
    )
    min_blur_variance: float = Field(
        15.0,
        ge=0,
        validation_alias=_env("MIN_BLUR_VARIANCE"),
        description="quality gate: Laplacian variance of the aligned crop below this is blurry",
    )
    max_pose_ratio: float = Field(
        3.0,
        ge=1,
        validation_alias=_env("MAX_POSE_RATIO"),
        description="quality gate: landmark asymmetry ratio above this is an extreme pose",
    )
    max_image_bytes: int = Field(
        50 * 1024 * 1024,
        ge=1024,
        validation_alias=_env("MAX_IMAGE_BYTES"),
        description="images larger than this are refused before download completes",
    )
    max_image_pixels: int = Field(
        60_000_000,
        ge=1,
        validation_alias=_env("MAX_IMAGE_PIXELS"),
        description="decompression-bomb guard: width×height limit read from the header",
    )
    max_image_side: int = Field(
        16_384,
        ge=16,
        validation_alias=_env("MAX_IMAGE_SIDE"),
        description="longest image side allowed, read from the header",
    )

    # --- ops-api ---
    ops_api_host: str = Field(
        "127.0.0.1", validation_alias=_env("OPS_API_HOST"), description="ops-api bind address"
    )
    ops_api_port: int = Field(
        8001, ge=1, le=65535, validation_alias=_env("OPS_API_PORT"), description="ops-api port"
    )
    ops_api_token: str = Field(
        "",
        validation_alias=_env("OPS_API_TOKEN"),
        description="when set, mutating endpoints need `Authorization: Bearer <token>`",
    )
    max_upload_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1024,
        validation_alias=_env("MAX_UPLOAD_BYTES"),
        description="largest /search upload",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", validation_alias=_env("LOG_LEVEL"), description="DEBUG, INFO, WARNING or ERROR"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in {"redis", "rediss", "unix"} or not (parsed.netloc or parsed.path):
            raise ValueError("must be a URL such as redis://host:6379/0 (schemes redis, rediss, unix)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _distinct_buckets(self) -> Settings:
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

    # --- derived names ---
    @property
    def ingest_stream(self) -> str:
        return self.redis_stream_name

    @property
    def detected_stream(self) -> str:
        return self.detected_stream_name or f"{self.redis_stream_name}:detected"

    @property
    def embedded_stream(self) -> str:
        return self.embedded_stream_name or f"{self.redis_stream_name}:embedded"

    @property
    def pipeline_streams(self) -> list[str]:
        """The streams in pipeline order; each has a DLQ at ``<stream>:dlq``."""
        return [self.ingest_stream, self.detected_stream, self.embedded_stream]

    @property
    def streams_by_role(self) -> dict[StreamRole, str]:
        """The pipeline streams by role, the one mapping from names to roles: ops-api labels
        its stream gauges with it, the operator feeds it to autoscalers and the status."""
        return dict(zip(STREAM_ROLES, self.pipeline_streams, strict=True))

    @property
    def qdrant_embedded(self) -> bool:
        return self.qdrant_url.strip().lower() in {"", "embedded"}

    def consumer_name(self) -> str:
        return self.redis_consumer_name or f"pipe-{socket.gethostname()}-{os.getpid()}"


def dlq_stream(stream: str) -> str:
    return f"{stream}:dlq"


class ConfigError(SystemExit):
    """Raised instead of a traceback: the message is the one line an operator needs."""


def _env_is_set(name: str) -> bool:
    return any(key.upper() == name.upper() for key in os.environ)


def _describe(error: dict) -> str:
    if not error["loc"]:  # a check of several settings together: its message names them
        return str(error["msg"]).removeprefix("Value error, ")
    loc = str(error["loc"][0])
    info = None
    env_name = loc.upper()
    for name, field_info in Settings.model_fields.items():
        choices = (
            field_info.validation_alias.choices
            if isinstance(field_info.validation_alias, AliasChoices)
            else []
        )
        if loc == name or loc in choices:
            # Name the variable that was actually set: pydantic reports the primary name
            # even when the value came through a legacy alias.
            names = [str(choice) for choice in choices] or [name.upper()]
            info = field_info
            env_name = next((n for n in names if _env_is_set(n)), names[0])
            break
    value = error.get("input")
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"} and info is not None:
        low = high = None
        for meta in info.metadata:
            low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
            low = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else low
            high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
            high = getattr(meta, "lt", None) if getattr(meta, "lt", None) is not None else high
        allowed = f"allowed range {low}..{high}" if high is not None else f"must be at least {low}"
    elif kind == "literal_error":
        allowed = f"allowed values: {ctx.get('expected')}"
    else:
        allowed = error["msg"].removeprefix("Value error, ")
    return f"{env_name}={value!r} is invalid: {allowed}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, or exit with one clear line per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {lines}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once (Phase 3, docs/compatibility.md: all flags are cached at start-up)."""
    return load_settings()
