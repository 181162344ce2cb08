"""Settings of the pipeline itself: Redis and its streams, dedup, the worker loop (Phase 3 sections)."""

from __future__ import annotations

import os
import socket

from pydantic import Field, field_validator

from facepipe.core.redisconn import check_url, hash_tag, is_cluster_url
from facepipe.core.settings.common import STREAM_ROLES, SettingsBase, StreamRole, env_names


class PipelineSettings(SettingsBase):
    # --- Redis connection & streams (Phase 3) ---
    redis_url: str = Field(
        "redis://localhost:6379/0",
        validation_alias=env_names("REDIS_URL"),
        description="Redis for streams, dedup cache and stats; redis+cluster://h:p[,h:p] for a Redis Cluster",
    )
    redis_cluster: bool = Field(
        False,
        validation_alias=env_names("REDIS_CLUSTER"),
        description="true: REDIS_URL is a seed node of a Redis Cluster (as the redis+cluster:// scheme says)",
    )
    redis_stream_name: str = Field(
        "face-processing-queue",
        min_length=1,
        validation_alias=env_names("REDIS_STREAM_NAME", "FACE_STREAM"),
        description="ingest stream the producer XADDs to",
    )
    redis_group_name: str = Field(
        "pipeline",
        min_length=1,
        validation_alias=env_names("REDIS_GROUP_NAME", "FACE_GROUP"),
        description="consumer group, the same on every stream",
    )
    redis_consumer_name: str = Field(
        "",
        validation_alias=env_names("REDIS_CONSUMER_NAME", "FACE_CONSUMER"),
        description="empty: pipe-{hostname}-{pid}",
    )
    # Streams between stages. Empty means derived from REDIS_STREAM_NAME.
    detected_stream_name: str = Field(
        "",
        validation_alias=env_names("DETECTED_STREAM_NAME"),
        description="detector → embedder stream; empty: <ingest>:detected",
    )
    embedded_stream_name: str = Field(
        "",
        validation_alias=env_names("EMBEDDED_STREAM_NAME"),
        description="embedder → indexer stream; empty: <ingest>:embedded",
    )

    # --- Dedup (Phase 3) ---
    enable_global_dedup: bool = Field(
        True,
        validation_alias=env_names("ENABLE_GLOBAL_DEDUP", "GLOBAL_DEDUP_ENABLED"),
        description="near-duplicate face suppression on/off (off: nothing read or written)",
    )
    dedup_ttl_seconds: int = Field(
        3600,
        ge=1,
        le=365 * 24 * 3600,
        validation_alias=env_names("DEDUP_TTL_SECONDS", "GLOBAL_DEDUP_TTL_SEC"),
        description="how long a remembered face pHash suppresses its near-duplicates",
    )
    dedup_max_hamming: int = Field(
        8,
        ge=0,
        le=64,
        validation_alias=env_names("DEDUP_MAX_HAMMING", "GLOBAL_DEDUP_MAX_HAMMING"),
        description="largest Hamming distance between 64-bit pHashes counted as duplicate",
    )
    dedup_claim_ttl_seconds: int = Field(
        120,
        ge=1,
        le=24 * 3600,
        validation_alias=env_names("DEDUP_CLAIM_TTL_SECONDS"),
        description="how long a face being indexed holds its pHash before it is confirmed "
        "(an indexer that dies mid-message leaves nothing behind after this)",
    )

    # --- Worker (Phase 3) ---
    max_worker_concurrency: int = Field(
        5,
        ge=1,
        le=256,
        validation_alias=env_names("MAX_WORKER_CONCURRENCY"),
        description="messages processed at once inside one worker (download/decode threads)",
    )
    worker_batch_size: int = Field(
        10,
        ge=1,
        le=1000,
        validation_alias=env_names("WORKER_BATCH_SIZE"),
        description="messages read per XREADGROUP (the --max-batch flag overrides)",
    )
    enable_queue_worker: bool = Field(
        True,
        validation_alias=env_names("ENABLE_QUEUE_WORKER"),
        description="master switch: false makes a worker log why and exit 0",
    )
    read_block_ms: int = Field(
        2000,
        ge=1,
        le=60_000,
        validation_alias=env_names("READ_BLOCK_MS"),
        description="XREADGROUP block time; --once returns after one empty block",
    )
    claim_idle_ms: int = Field(
        60_000,
        ge=100,
        le=86_400_000,
        validation_alias=env_names("CLAIM_IDLE_MS"),
        description="pending entries idle this long are reclaimed from dead consumers (XCLAIM)",
    )
    max_deliveries: int = Field(
        5,
        ge=1,
        le=100,
        validation_alias=env_names("MAX_DELIVERIES"),
        description="deliveries after which an entry is a poison pill and goes to the DLQ",
    )
    retry_backoff_initial_s: float = Field(
        0.5,
        gt=0,
        le=60,
        validation_alias=env_names("RETRY_BACKOFF_INITIAL_S"),
        description="first back-off after a transient error (Redis/S3/Qdrant unreachable)",
    )
    retry_backoff_max_s: float = Field(
        30.0,
        gt=0,
        le=600,
        validation_alias=env_names("RETRY_BACKOFF_MAX_S"),
        description="back-off ceiling; transient errors are retried forever, never DLQ'd",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        validation_alias=env_names("METRICS_PORT"),
        description="port of the worker's Prometheus /metrics (and /healthz, /readyz); 0: off",
    )
    worker_stall_seconds: float = Field(
        300.0,
        gt=0,
        le=86_400,
        validation_alias=env_names("WORKER_STALL_SECONDS"),
        description="a worker loop that has not come round for this long answers 503 on /healthz (restart)",
    )
    stream_retention_ms: int = Field(
        0,
        ge=-1,
        le=30 * 24 * 3600 * 1000,
        validation_alias=env_names("STREAM_RETENTION_MS"),
        description="acked entries younger than this stay in a pipeline stream (for inspection); "
        "older ones are trimmed. 0: trimmed once acked; -1: never trimmed",
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url_is_url(cls, value: str) -> str:
        return check_url(value)

    # --- derived names ---
    @property
    def cluster_mode(self) -> bool:
        """Whether Redis is a Redis Cluster (REDIS_CLUSTER=true or a redis+cluster:// URL)."""
        return self.redis_cluster or is_cluster_url(self.redis_url)

    def cluster_stream_problem(self) -> str | None:
        """On a cluster, why the pipeline streams cannot be worked (None when they can): a stage's
        MULTI (XACK, XADD to the next stream, counters) must stay within one slot, so the three
        streams carry one hash tag, the tenant's: ``face-processing-queue:{<tenant>}``."""
        if not self.cluster_mode:
            return None
        tags = {hash_tag(stream) for stream in self.pipeline_streams}
        if None in tags or len(tags) != 1:
            return (
                "on a Redis Cluster the pipeline streams must share one tenant hash tag, e.g. "
                "REDIS_STREAM_NAME=face-processing-queue:{tenant}; got " + ", ".join(self.pipeline_streams)
            )
        return None

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

    def consumer_name(self) -> str:
        return self.redis_consumer_name or f"pipe-{socket.gethostname()}-{os.getpid()}"
