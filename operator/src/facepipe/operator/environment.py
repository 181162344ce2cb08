"""Each component's environment: the ConfigMap of shared settings, Secret references, per-pod values.

Derived from the one table of facepipe.operator.envmap: a setting several components read
comes from the ConfigMap only, so they can never disagree; a pod carries, and its config
hash covers, only the settings its component reads.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from facepipe.core.settings import Settings
from facepipe.operator.constants import METRICS_PORT, WORKERS, Component, StreamRole
from facepipe.operator.envmap import reads
from facepipe.operator.objects import PipelineRef, config_map_name
from facepipe.operator.spec import PipelineSpec

_STREAM_SETTINGS = ("REDIS_STREAM_NAME", "DETECTED_STREAM_NAME", "EMBEDDED_STREAM_NAME")


def stream_names(spec: PipelineSpec) -> dict[StreamRole, str]:
    """The pipeline's streams by role: what the pods' own Settings make of the ConfigMap.

    The one source of the names the KEDA triggers, the status figures and the purge use,
    so a custom DETECTED_STREAM_NAME (spec.settings) reaches all of them.
    """
    shared = shared_env(spec)
    names = {name: shared[name] for name in _STREAM_SETTINGS if name in shared}
    return Settings.model_validate(names).streams_by_role


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


def container_env(owner: PipelineRef, spec: PipelineSpec, component: Component) -> list[dict[str, Any]]:
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
