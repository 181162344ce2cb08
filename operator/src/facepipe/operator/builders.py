"""Pure builders: one FacePipeline spec in, the Kubernetes objects it stands for out.

Nothing here talks to an API server; every function is deterministic, so the
handlers' children can be checked (and validated against the Kubernetes schemas)
in unit tests. The handlers apply what these functions return. The pieces live in
facepipe.operator.objects (names, labels), .environment (env, ConfigMap), .pod (pod
template) and .autoscalers; this module assembles them and is the one to import.
"""

from __future__ import annotations

from typing import Any

from facepipe.operator.autoscalers import build_autoscaler, build_hpa, build_scaled_object, keda_redis_address
from facepipe.operator.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_RESTARTED_AT,
    COMPONENTS,
    LABEL_INSTANCE,
    LABEL_ROLE,
    METRICS_PORT,
    MODULES,
    Component,
)
from facepipe.operator.environment import (
    component_literal_env,
    component_shared_keys,
    config_hash,
    container_env,
    secret_env,
    shared_env,
    stream_names,
)
from facepipe.operator.objects import (
    Manifest,
    PipelineRef,
    child_name,
    common_labels,
    component_labels,
    component_spec,
    config_map_name,
    metadata,
    owner_reference,
    selector_labels,
)
from facepipe.operator.pod import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    component_image,
    models_init_container,
    models_mount,
    models_volume,
    pod_resources,
    ports_and_probes,
    runs_on_gpu,
    uses_models,
    writable_mounts,
    writable_volumes,
)
from facepipe.operator.spec import PipelineSpec

__all__ = [
    "Manifest",
    "PipelineRef",
    "build_autoscaler",
    "build_children",
    "build_config_map",
    "build_deployment",
    "build_hpa",
    "build_ops_api_service",
    "build_scaled_object",
    "build_workers_service",
    "child_name",
    "component_image",
    "component_literal_env",
    "component_shared_keys",
    "config_hash",
    "config_map_name",
    "keda_redis_address",
    "models_init_container",
    "owner_reference",
    "secret_env",
    "shared_env",
    "stream_names",
]


def build_deployment(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest:
    comp = component_spec(spec, component)
    container: dict[str, Any] = {
        "name": component,
        "image": component_image(spec, component),
        "imagePullPolicy": spec.image.pullPolicy,
        "command": ["python", "-m", MODULES[component]],
        "env": container_env(owner, spec, component),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        **ports_and_probes(spec, component),
        "volumeMounts": writable_mounts(),
    }
    resources = pod_resources(spec, component, comp.resources)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        # SIGTERM: a worker stops reading, finishes and acks the batch in hand; this covers one batch.
        "terminationGracePeriodSeconds": comp.terminationGracePeriodSeconds,
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "containers": [container],
        "volumes": writable_volumes(),
    }
    if uses_models(component):
        container["volumeMounts"].append(models_mount(spec, read_only=True))
        pod_spec["initContainers"] = [models_init_container(spec, component)]
        pod_spec["volumes"].append(models_volume(spec))
    if runs_on_gpu(spec, component):
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
        "metadata": metadata(owner, child_name(owner, component), component_labels(owner, spec, component)),
        "spec": deployment_spec,
    }


def build_config_map(owner: PipelineRef, spec: PipelineSpec) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(owner, config_map_name(owner), common_labels(owner, spec)),
        "data": shared_env(spec),
    }


def build_ops_api_service(owner: PipelineRef, spec: PipelineSpec) -> Manifest:
    ops = spec.components.opsApi
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, child_name(owner, "ops-api"), component_labels(owner, spec, "ops-api")),
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
        "metadata": metadata(owner, child_name(owner, "workers"), common_labels(owner, spec)),
        "spec": {
            "clusterIP": "None",
            "selector": {LABEL_INSTANCE: owner.name, LABEL_ROLE: "worker"},
            "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}],
        },
    }


def build_children(owner: PipelineRef, spec: PipelineSpec) -> list[Manifest]:
    """Every object one FacePipeline stands for, in the order they are applied."""
    children = [build_config_map(owner, spec)]
    children += [build_deployment(owner, spec, component) for component in COMPONENTS]
    children += [build_ops_api_service(owner, spec), build_workers_service(owner, spec)]
    children += [scaler for component in COMPONENTS if (scaler := build_autoscaler(owner, spec, component))]
    return children
