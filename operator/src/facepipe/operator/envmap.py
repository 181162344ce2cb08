"""The one table of the pipeline's settings: who reads each one, and who may set it.

The names are the primary environment names of ``facepipe.core.settings.Settings``.
Every component's environment is derived from this table (facepipe.operator.environment),
so a setting more than one component reads comes from one place, the ConfigMap, and
can never differ between them; only the settings in :data:`PER_COMPONENT` (batch sizes,
threads, the consumer name, ...) may take a component's own value.

A pod template carries (and its config hash covers) only the settings its component
reads, so changing e.g. ``DEDUP_MAX_HAMMING`` rolls the indexer and ops-api but never
the detector or the embedder. tests/operator/test_env_table.py checks the readers
against what each component's code reads, so a new setting or a new read cannot
silently miss its pods.
"""

from __future__ import annotations

from typing import Final

from pydantic import AliasChoices

from facepipe.core.settings import Settings
from facepipe.operator.constants import COMPONENTS, WORKERS, Component

ALL: Final[frozenset[Component]] = frozenset(COMPONENTS)
_WORKERS: Final[frozenset[Component]] = frozenset(WORKERS)
_MODEL_RUNNERS: Final[frozenset[Component]] = frozenset({"detector", "embedder", "ops-api"})
_IMAGE_DECODERS: Final[frozenset[Component]] = frozenset({"detector", "ops-api"})

# Per pod by nature: how much work one pod takes on, its consumer name, its retry pacing.
WORKER_LOOP: Final = (
    "REDIS_CONSUMER_NAME",
    "ENABLE_QUEUE_WORKER",
    "READ_BLOCK_MS",
    "CLAIM_IDLE_MS",
    "MAX_DELIVERIES",
    "RETRY_BACKOFF_INITIAL_S",
    "RETRY_BACKOFF_MAX_S",
    "WORKER_BATCH_SIZE",
    "MAX_WORKER_CONCURRENCY",
    "METRICS_PORT",
    "WORKER_STALL_SECONDS",
    "STREAM_RETENTION_MS",
)
DETECTION_AND_QUALITY: Final = (
    "DET_SIZE",
    "DET_THRESHOLD",
    "MIN_FACE_SIZE",
    "MIN_DET_SCORE",
    "MIN_BLUR_VARIANCE",
    "MAX_POSE_RATIO",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_IMAGE_SIDE",
)

_GROUPS: Final[list[tuple[frozenset[Component], tuple[str, ...]]]] = [
    # Streams: every component (ops-api reports their figures).
    (
        ALL,
        (
            "REDIS_URL",
            "REDIS_CLUSTER",
            "REDIS_STREAM_NAME",
            "REDIS_GROUP_NAME",
            "DETECTED_STREAM_NAME",
            "EMBEDDED_STREAM_NAME",
            "LOG_LEVEL",
        ),
    ),
    # The worker loop.
    (_WORKERS, WORKER_LOOP),
    # Dedup: the indexer commits, ops-api reports, checks and flushes.
    (frozenset({"indexer", "ops-api"}), ("ENABLE_GLOBAL_DEDUP", "DEDUP_TTL_SECONDS", "DEDUP_MAX_HAMMING")),
    # Only the indexer claims faces while it indexes them.
    (frozenset({"indexer"}), ("DEDUP_CLAIM_TTL_SECONDS",)),
    # Object storage: the detector downloads, the indexer stores artifacts, ops-api serves/deletes.
    (
        frozenset({"detector", "indexer", "ops-api"}),
        (
            "MINIO_ENDPOINT",
            "MINIO_ACCESS_KEY",
            "MINIO_SECRET_KEY",
            "MINIO_SECURE",
            "BUCKET_RAW",
            "BUCKET_CROPS",
            "BUCKET_THUMBS",
            "BUCKET_METADATA",
        ),
    ),
    # Vectors: the indexer upserts, ops-api searches.
    (frozenset({"indexer", "ops-api"}), ("QDRANT_URL", "QDRANT_API_KEY", "QDRANT_COLLECTION", "QDRANT_PATH")),
    # The pack: everyone. The indexer runs no model but refuses vectors of another pack
    # (model_pack_mismatch) and sizes the collection by the pack's dimension.
    (ALL, ("MODEL_PACK",)),
    # Models: detection and embedding; ops-api runs both for search by photo.
    (_MODEL_RUNNERS, ("MODELS_DIR", "INFERENCE_DEVICE", "ORT_INTRA_OP_THREADS")),
    (frozenset({"embedder"}), ("EMBED_BATCH_SIZE", "EMBED_MAX_WAIT_MS")),
    # Detection, quality gates and image limits: wherever whole images are decoded and faces detected.
    (_IMAGE_DECODERS, DETECTION_AND_QUALITY),
    (frozenset({"ops-api"}), ("OPS_API_HOST", "OPS_API_PORT", "OPS_API_TOKEN", "MAX_UPLOAD_BYTES")),
]

READERS: Final[dict[str, frozenset[Component]]] = {name: who for who, names in _GROUPS for name in names}

# Settings whose value may differ between the components that read them, by design: how
# much work one pod takes on, its threads, its consumer name, its retry pacing. ops-api
# runs its models on the CPU whatever INFERENCE_DEVICE the workers use (it gets no GPU).
# Every other setting read by more than one component has one value for all of them.
PER_COMPONENT: Final[frozenset[str]] = frozenset({*WORKER_LOOP, "INFERENCE_DEVICE", "ORT_INTRA_OP_THREADS"})

# Set from dedicated spec fields (or per pod); spec.settings may not override them.
MANAGED: Final[dict[str, str]] = {
    "REDIS_URL": "spec.redis.url / urlSecretRef",
    "REDIS_CLUSTER": "spec.redis.cluster",
    "REDIS_STREAM_NAME": "spec.redis.streamName",
    "REDIS_GROUP_NAME": "spec.redis.groupName",
    "REDIS_CONSUMER_NAME": "spec.redis.consumerNamePrefix (the pod name follows it)",
    "ENABLE_GLOBAL_DEDUP": "spec.dedup.enabled",
    "DEDUP_TTL_SECONDS": "spec.dedup.ttlSeconds",
    "DEDUP_MAX_HAMMING": "spec.dedup.maxHamming",
    "WORKER_BATCH_SIZE": "spec.components.<worker>.batchSize",
    "MAX_WORKER_CONCURRENCY": "spec.components.<worker>.concurrency",
    "METRICS_PORT": "the operator (9100 on workers)",
    "MINIO_ENDPOINT": "spec.storage.endpoint",
    "MINIO_ACCESS_KEY": "spec.storage.secretRef",
    "MINIO_SECRET_KEY": "spec.storage.secretRef",
    "MINIO_SECURE": "spec.storage.secure",
    "BUCKET_RAW": "spec.storage.buckets.raw",
    "BUCKET_CROPS": "spec.storage.buckets.crops",
    "BUCKET_THUMBS": "spec.storage.buckets.thumbs",
    "BUCKET_METADATA": "spec.storage.buckets.metadata",
    "QDRANT_URL": "spec.vectorDb.url",
    "QDRANT_API_KEY": "spec.vectorDb.apiKeySecretRef",
    "QDRANT_COLLECTION": "spec.vectorDb.collection",
    "QDRANT_PATH": "nothing: a Qdrant server is required in Kubernetes",
    "MODEL_PACK": "spec.models.pack",
    "MODELS_DIR": "spec.models.volume.mountPath",
    "INFERENCE_DEVICE": "spec.models.device",
    "OPS_API_HOST": "the operator (0.0.0.0)",
    "OPS_API_PORT": "spec.components.opsApi.port",
    "OPS_API_TOKEN": "spec.components.opsApi.tokenSecretRef",
    "LOG_LEVEL": "spec.logLevel",
}


def primary_env_names() -> list[str]:
    """Every setting's primary environment name, in the order of the Settings class."""
    names = []
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices)
        names.append(str(alias.choices[0]))
    return names


def legacy_aliases() -> dict[str, str]:
    aliases = {}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        assert isinstance(alias, AliasChoices)
        primary, *others = (str(choice) for choice in alias.choices)
        aliases.update(dict.fromkeys(others, primary))
    return aliases


def reads(component: Component, name: str) -> bool:
    # A setting missing from the table (added to Settings later) goes to everyone: safe, if noisy.
    return component in READERS.get(name, ALL)


def component_may_set(component: Component, name: str) -> bool:
    """Whether spec.components.<component>.settings may give ``name`` its own value there."""
    return reads(component, name) and (name in PER_COMPONENT or READERS.get(name) == {component})
