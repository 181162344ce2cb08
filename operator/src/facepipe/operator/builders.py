"""Pure builders: one FacePipeline spec in, the Kubernetes objects it stands for out.

Nothing here talks to an API server; every function is deterministic, so the
handlers' children can be checked (and validated against the Kubernetes schemas)
in unit tests. The handlers apply what these functions return.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from facepipe.core import metrics
from facepipe.core.settings import Settings
from facepipe.operator.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_RESTARTED_AT,
    API_VERSION,
    BACKLOG_METRIC,
    COMPONENTS,
    INPUT_ROLE,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_ROLE,
    LABEL_TENANT,
    METRICS_PORT,
    MODULES,
    OPERATOR_NAME,
    WORKERS,
    Component,
    StreamRole,
)
from facepipe.operator.envmap import reads
from facepipe.operator.spec import OpsApiSpec, PipelineSpec, Resources, WorkerSpec

Manifest = dict[str, Any]


@dataclass(frozen=True)
class PipelineRef:
    """The FacePipeline the children belong to."""

    name: str
    namespace: str
    uid: str


def owner_reference(owner: PipelineRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_name(owner: PipelineRef, suffix: str) -> str:
    return f"{owner.name}-{suffix}"


def config_map_name(owner: PipelineRef) -> str:
    return child_name(owner, "config")


def selector_labels(owner: PipelineRef, component: Component) -> dict[str, str]:
    return {LABEL_INSTANCE: owner.name, LABEL_COMPONENT: component}


def common_labels(owner: PipelineRef, spec: PipelineSpec) -> dict[str, str]:
    return {
        LABEL_NAME: "facepipe",
        LABEL_INSTANCE: owner.name,
        LABEL_PART_OF: "face-pipeline",
        LABEL_MANAGED_BY: OPERATOR_NAME,
        LABEL_TENANT: spec.tenantId,
    }


def component_labels(owner: PipelineRef, spec: PipelineSpec, component: Component) -> dict[str, str]:
    labels = {**common_labels(owner, spec), LABEL_COMPONENT: component}
    if component in WORKERS:
        labels[LABEL_ROLE] = "worker"
    return labels


def _metadata(owner: PipelineRef, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


# --- streams -----------------------------------------------------------------------------------


_STREAM_SETTINGS = ("REDIS_STREAM_NAME", "DETECTED_STREAM_NAME", "EMBEDDED_STREAM_NAME")


def stream_names(spec: PipelineSpec) -> dict[StreamRole, str]:
    """The pipeline's streams by role: what the pods' own Settings make of the ConfigMap.

    The one source of the names the KEDA triggers, the status figures and the purge use,
    so a custom DETECTED_STREAM_NAME (spec.settings) reaches all of them.
    """
    shared = shared_env(spec)
    names = {name: shared[name] for name in _STREAM_SETTINGS if name in shared}
    return Settings.model_validate(names).streams_by_role


# --- environment -------------------------------------------------------------------------------


def _flag(value: bool) -> str:
    return "true" if value else "false"


def shared_env(spec: PipelineSpec) -> dict[str, str]:
    """The ConfigMap: every setting shared by the components, under its Phase 3 name."""
    env: dict[str, str] = {}
    if spec.redis.url is not None:
        env["REDIS_URL"] = spec.redis.url
    buckets = spec.storage.buckets
    env.update(
        {
            "REDIS_STREAM_NAME": spec.ingest_stream,
            "REDIS_GROUP_NAME": spec.redis.groupName,
            "ENABLE_GLOBAL_DEDUP": _flag(spec.dedup.enabled),
            "DEDUP_MAX_HAMMING": str(spec.dedup.maxHamming),
            "DEDUP_TTL_SECONDS": str(spec.dedup.ttlSeconds),
            "MINIO_ENDPOINT": spec.storage.endpoint,
            "MINIO_SECURE": _flag(spec.storage.secure),
            "BUCKET_RAW": buckets.raw,
            "BUCKET_CROPS": buckets.crops,
            "BUCKET_THUMBS": buckets.thumbs,
            "BUCKET_METADATA": buckets.metadata,
            "QDRANT_URL": spec.vectorDb.url,
            "QDRANT_COLLECTION": spec.vectorDb.collection,
            "MODEL_PACK": spec.models.pack,
            "MODELS_DIR": spec.models.volume.mountPath,
            "INFERENCE_DEVICE": spec.models.device,
            "LOG_LEVEL": spec.logLevel,
        }
    )
    env.update(spec.settings)
    return dict(sorted(env.items()))


def secret_env(spec: PipelineSpec) -> dict[str, dict[str, str]]:
    """Settings that come from Secrets: env name → secretKeyRef."""
    refs: dict[str, dict[str, str]] = {}
    if spec.redis.urlSecretRef is not None:
        refs["REDIS_URL"] = {"name": spec.redis.urlSecretRef.name, "key": spec.redis.urlSecretRef.key}
    if spec.storage.secretRef is not None:
        ref = spec.storage.secretRef
        refs["MINIO_ACCESS_KEY"] = {"name": ref.name, "key": ref.accessKeyKey}
        refs["MINIO_SECRET_KEY"] = {"name": ref.name, "key": ref.secretKeyKey}
    if spec.vectorDb.apiKeySecretRef is not None:
        refs["QDRANT_API_KEY"] = {
            "name": spec.vectorDb.apiKeySecretRef.name,
            "key": spec.vectorDb.apiKeySecretRef.key,
        }
    if spec.components.opsApi.tokenSecretRef is not None:
        refs["OPS_API_TOKEN"] = {
            "name": spec.components.opsApi.tokenSecretRef.name,
            "key": spec.components.opsApi.tokenSecretRef.key,
        }
    return refs


def _component_spec(spec: PipelineSpec, component: Component) -> WorkerSpec | OpsApiSpec:
    return spec.components.opsApi if component == "ops-api" else spec.worker(component)


def component_literal_env(spec: PipelineSpec, component: Component) -> dict[str, str]:
    """Per-component values written straight into the pod template."""
    env: dict[str, str] = {}
    if component == "ops-api":
        ops = spec.components.opsApi
        env.update(
            {
                "OPS_API_HOST": "0.0.0.0",
                "OPS_API_PORT": str(ops.port),
                # ops-api pods get no GPU; detection for search-by-photo runs on the CPU.
                "INFERENCE_DEVICE": "cpu",
            }
        )
        env.update(ops.settings)
    else:
        worker = spec.worker(component)
        env.update(
            {
                "WORKER_BATCH_SIZE": str(worker.batchSize),
                "MAX_WORKER_CONCURRENCY": str(worker.concurrency),
                "METRICS_PORT": str(METRICS_PORT),
            }
        )
        env.update(worker.settings)
    return env


def component_shared_keys(spec: PipelineSpec, component: Component) -> list[str]:
    """ConfigMap keys this component reads (minus those its pod sets itself)."""
    literal = component_literal_env(spec, component)
    return [name for name in shared_env(spec) if reads(component, name) and name not in literal]


def config_hash(spec: PipelineSpec, component: Component) -> str:
    """Hash of the ConfigMap values and Secret references this component reads.

    It goes into the pod template, so a change to any of them rolls exactly the
    Deployments that read it. (A Secret's content is not hashed: rotate by restartAt.)
    """
    shared = shared_env(spec)
    material = {
        "config": {name: shared[name] for name in component_shared_keys(spec, component)},
        "secrets": {name: ref for name, ref in secret_env(spec).items() if reads(component, name)},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _container_env(owner: PipelineRef, spec: PipelineSpec, component: Component) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {
            "name": "POD_NAMESPACE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
        },
    ]
    if component in WORKERS:
        # One consumer per pod, stable for the pod's life: its pending entries stay its own.
        prefix = spec.redis.consumerNamePrefix
        if prefix:
            env.append({"name": "REDIS_CONSUMER_NAME", "value": f"{prefix}$(POD_NAME)"})
        else:
            env.append(
                {
                    "name": "REDIS_CONSUMER_NAME",
                    "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
                }
            )
    cm = config_map_name(owner)
    env += [
        {"name": name, "valueFrom": {"configMapKeyRef": {"name": cm, "key": name}}}
        for name in component_shared_keys(spec, component)
    ]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": dict(ref)}}
        for name, ref in secret_env(spec).items()
        if reads(component, name)
    ]
    env += [{"name": name, "value": value} for name, value in component_literal_env(spec, component).items()]
    return env


def _resources(spec: PipelineSpec, component: Component, resources: Resources) -> dict[str, Any]:
    requests = dict(resources.requests)
    limits = dict(resources.limits)
    if _runs_on_gpu(spec, component):
        limits.setdefault(spec.models.gpuResourceName, 1)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _runs_on_gpu(spec: PipelineSpec, component: Component) -> bool:
    return spec.models.device == "cuda" and component in ("detector", "embedder")


def component_image(spec: PipelineSpec, component: Component) -> str:
    """``<spec.image.repository>/<component>:<tag>``, the image skaffold builds for it.

    A component's own image.repository / image.tag replace those parts; on cuda the
    detector and embedder run the onnxruntime-gpu build (tag + gpuTagSuffix) unless
    their tag is given.
    """
    override = _component_spec(spec, component).image
    repository = override.repository or f"{spec.image.repository.rstrip('/')}/{component}"
    tag = override.tag or spec.image.tag
    if not override.tag and _runs_on_gpu(spec, component):
        tag += spec.image.gpuTagSuffix
    return f"{repository}:{tag}"


def _uses_models(component: Component) -> bool:
    return component in ("detector", "embedder", "ops-api")


# The user of every image (Dockerfile: USER 10001:10001); pods run as it, never as root.
APP_UID = 10001
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": APP_UID,
    "runAsGroup": APP_UID,
    "fsGroup": APP_UID,  # emptyDirs and claims writable by the app's group
    "seccompProfile": {"type": "RuntimeDefault"},
}
# Pod Security "restricted", and a read-only root: the services write only to /tmp (uploads,
# the fetch's staging) and to the models volume (the init container).
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
TMP_MOUNT: dict[str, Any] = {"name": "tmp", "mountPath": "/tmp"}
TMP_VOLUME: dict[str, Any] = {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}
FETCH_MODULE = "facepipe.vision.models.fetch"
# The worker's health endpoints on METRICS_PORT (facepipe.core.metrics.start_metrics_server).
WORKER_HEALTH_PATH = metrics.HEALTH_PATH
WORKER_READY_PATH = metrics.READY_PATH


def _models_mount(spec: PipelineSpec, *, read_only: bool) -> dict[str, Any]:
    volume = spec.models.volume
    mount: dict[str, Any] = {"name": "models", "mountPath": volume.mountPath, "readOnly": read_only}
    if volume.subPath:
        mount["subPath"] = volume.subPath
    return mount


def _models_volume(spec: PipelineSpec) -> dict[str, Any]:
    volume = spec.models.volume
    if volume.claimName:
        return {
            "name": "models",
            "persistentVolumeClaim": {"claimName": volume.claimName, "readOnly": volume.readOnly},
        }
    return {"name": "models", "emptyDir": {}}


def models_init_container(spec: PipelineSpec, component: Component) -> dict[str, Any]:
    """Brings the pack's files to /models before the component starts, with the pod's own image.

    An emptyDir (or a writable claim) is filled by the sha256-checked fetch; a read-only
    claim (pre-filled, air-gapped) or a pack the product cannot download is only verified,
    and the pod stays in Init with the missing files named in the init container's log.
    """
    volume = spec.models.volume
    fetch = volume.claimName is None or not volume.readOnly
    args = ["--pack", spec.models.pack, "--dir", volume.mountPath]
    if not fetch:
        args.append("--verify")
    container: dict[str, Any] = {
        "name": "models",
        "image": component_image(spec, component),
        "imagePullPolicy": spec.image.pullPolicy,
        "command": ["python", "-m", FETCH_MODULE, *args],
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [_models_mount(spec, read_only=not fetch), dict(TMP_MOUNT)],
    }
    if spec.models.indexUrl:
        container["env"] = [{"name": "MODELS_INDEX_URL", "value": spec.models.indexUrl}]
    return container


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _ports_and_probes(spec: PipelineSpec, component: Component) -> dict[str, Any]:
    if component == "ops-api":
        return {
            "ports": [{"name": "http", "containerPort": spec.components.opsApi.port, "protocol": "TCP"}],
            "readinessProbe": _http_probe("/ready", "http", period=10, failures=3),
            # "/" answers from the event loop alone: liveness must not depend on Redis or S3.
            "livenessProbe": _http_probe("/", "http", period=20, failures=3),
        }
    # Workers answer on their metrics port (facepipe.core.metrics): /readyz once the models
    # are loaded and the loop runs, /healthz while the loop keeps coming round (a stalled
    # worker, WORKER_STALL_SECONDS without a pass, is restarted). Model loading may take
    # minutes: the startup probe allows 10 before liveness applies.
    return {
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "startupProbe": _http_probe(WORKER_READY_PATH, "metrics", period=5, failures=120),
        "readinessProbe": _http_probe(WORKER_READY_PATH, "metrics", period=10, failures=3),
        "livenessProbe": _http_probe(WORKER_HEALTH_PATH, "metrics", period=30, failures=3),
    }


def build_deployment(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest:
    comp = _component_spec(spec, component)
    container: dict[str, Any] = {
        "name": component,
        "image": component_image(spec, component),
        "imagePullPolicy": spec.image.pullPolicy,
        "command": ["python", "-m", MODULES[component]],
        "env": _container_env(owner, spec, component),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        **_ports_and_probes(spec, component),
        "volumeMounts": [dict(TMP_MOUNT)],
    }
    resources = _resources(spec, component, comp.resources)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        # SIGTERM: a worker stops reading, finishes and acks the batch in hand; this covers one batch.
        "terminationGracePeriodSeconds": comp.terminationGracePeriodSeconds,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": [dict(TMP_VOLUME)],
    }
    if _uses_models(component):
        container["volumeMounts"].append(_models_mount(spec, read_only=True))
        pod_spec["initContainers"] = [models_init_container(spec, component)]
        pod_spec["volumes"].append(_models_volume(spec))
    if _runs_on_gpu(spec, component):
        pod_spec["tolerations"] = [
            {"key": spec.models.gpuResourceName, "operator": "Exists", "effect": "NoSchedule"}
        ]
    if spec.image.pullSecrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image.pullSecrets]
    annotations = {ANNOTATION_CONFIG_HASH: config_hash(spec, component)}
    if spec.restartAt:
        annotations[ANNOTATION_RESTARTED_AT] = spec.restartAt
    deployment_spec: dict[str, Any] = {
        "revisionHistoryLimit": 5,
        "selector": {"matchLabels": selector_labels(owner, component)},
        "template": {
            "metadata": {"labels": component_labels(owner, spec, component), "annotations": annotations},
            "spec": pod_spec,
        },
    }
    if not comp.autoscaling.enabled:
        # With autoscaling on, the autoscaler owns spec.replicas; writing it would fight it.
        deployment_spec = {"replicas": comp.replicas, **deployment_spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, child_name(owner, component), component_labels(owner, spec, component)),
        "spec": deployment_spec,
    }


def build_config_map(owner: PipelineRef, spec: PipelineSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, config_map_name(owner), common_labels(owner, spec)),
        "data": shared_env(spec),
    }


def build_ops_api_service(owner: PipelineRef, spec: PipelineSpec) -> Manifest:
    ops = spec.components.opsApi
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, child_name(owner, "ops-api"), component_labels(owner, spec, "ops-api")),
        "spec": {
            "type": ops.serviceType,
            "selector": selector_labels(owner, "ops-api"),
            # ops-api serves /metrics on its own port.
            "ports": [{"name": "http", "port": ops.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_workers_service(owner: PipelineRef, spec: PipelineSpec) -> Manifest:
    """Headless Service naming the workers' metrics ports (for scrapers that discover by Service)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, child_name(owner, "workers"), common_labels(owner, spec)),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_INSTANCE: owner.name, LABEL_ROLE: "worker"},
            "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


# --- autoscaling -------------------------------------------------------------------------------


def keda_redis_address(url: str) -> dict[str, str]:
    """KEDA redis-streams trigger metadata for a password-less redis:// or rediss:// URL."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"KEDA needs a TCP Redis address, not a {parsed.scheme}:// URL")
    if parsed.password or parsed.username:
        raise ValueError("redis.url holds credentials; give KEDA them by redis.kedaAuthenticationRef")
    if not parsed.hostname:
        raise ValueError("redis.url has no host")
    metadata = {"address": f"{parsed.hostname}:{parsed.port or 6379}"}
    database = parsed.path.strip("/")
    if database:
        if not database.isdigit():
            raise ValueError(f"redis.url database {database!r} is not a number")
        metadata["databaseIndex"] = database
    if parsed.scheme == "rediss":
        metadata["enableTLS"] = "true"
    return metadata


def _scale_target(owner: PipelineRef, component: Component) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(owner, component)}


def build_hpa(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest:
    metadata = _metadata(owner, child_name(owner, component), component_labels(owner, spec, component))
    if component == "ops-api":
        scaling = spec.components.opsApi.autoscaling
        metrics = [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": scaling.targetCPUUtilizationPercentage,
                    },
                },
            }
        ]
        bounds = (scaling.minReplicas, scaling.maxReplicas)
    else:
        worker = spec.worker(component).autoscaling
        # Backlog = consumer-group lag + pending of the component's input stream (docs/design.md).
        # Stream names hold ':' which label values cannot, so the metric is selected by role.
        metrics = [
            {
                "type": "External",
                "external": {
                    "metric": {
                        "name": BACKLOG_METRIC,
                        "selector": {
                            "matchLabels": {"stream_role": INPUT_ROLE[component], "tenant": spec.tenantId}
                        },
                    },
                    "target": {"type": "AverageValue", "averageValue": str(worker.targetLagPerReplica)},
                },
            }
        ]
        bounds = (worker.minReplicas, worker.maxReplicas)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": _scale_target(owner, component),
            "minReplicas": bounds[0],
            "maxReplicas": bounds[1],
            "metrics": metrics,
        },
    }


def build_scaled_object(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest:
    metadata = _metadata(owner, child_name(owner, component), component_labels(owner, spec, component))
    if component == "ops-api":
        scaling = spec.components.opsApi.autoscaling
        triggers: list[dict[str, Any]] = [
            {
                "type": "cpu",
                "metricType": "Utilization",
                "metadata": {"value": str(scaling.targetCPUUtilizationPercentage)},
            }
        ]
        bounds = (scaling.minReplicas, scaling.maxReplicas)
    else:
        worker = spec.worker(component).autoscaling
        trigger_metadata = {
            "stream": stream_names(spec)[INPUT_ROLE[component]],
            "consumerGroup": spec.redis.groupName,
            "lagCount": str(worker.targetLagPerReplica),
        }
        trigger: dict[str, Any] = {"type": "redis-streams", "metadata": trigger_metadata}
        if spec.redis.kedaAuthenticationRef:
            trigger["authenticationRef"] = {"name": spec.redis.kedaAuthenticationRef}
        else:
            assert spec.redis.url is not None  # parse_spec guarantees it
            trigger_metadata.update(keda_redis_address(spec.redis.url))
        triggers = [trigger]
        bounds = (worker.minReplicas, worker.maxReplicas)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"name": child_name(owner, component)},
            "minReplicaCount": bounds[0],
            "maxReplicaCount": bounds[1],
            "triggers": triggers,
        },
    }


def build_autoscaler(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest | None:
    """An HPA or a KEDA ScaledObject (never both), or None when autoscaling is off."""
    scaling = _component_spec(spec, component).autoscaling
    if not scaling.enabled:
        return None
    if scaling.provider == "keda":
        return build_scaled_object(owner, spec, component)
    return build_hpa(owner, spec, component)


def build_children(owner: PipelineRef, spec: PipelineSpec) -> list[Manifest]:
    """Every object one FacePipeline stands for, in the order they are applied."""
    children = [build_config_map(owner, spec)]
    children += [build_deployment(owner, spec, component) for component in COMPONENTS]
    children += [build_ops_api_service(owner, spec), build_workers_service(owner, spec)]
    children += [scaler for component in COMPONENTS if (scaler := build_autoscaler(owner, spec, component))]
    return children
