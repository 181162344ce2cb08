"""Who a FacePipeline's children are: their owner, names and labels (pure).

Shared by the builders of every child (facepipe.operator.builders, .pod, .environment,
.autoscalers) so that a name or label is spelled in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facepipe.operator.constants import (
    API_VERSION,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_ROLE,
    LABEL_TENANT,
    OPERATOR_NAME,
    WORKERS,
    Component,
)
from facepipe.operator.spec import OpsApiSpec, PipelineSpec, WorkerSpec

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


def metadata(owner: PipelineRef, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(owner)],
    }


def component_spec(spec: PipelineSpec, component: Component) -> WorkerSpec | OpsApiSpec:
    return spec.components.opsApi if component == "ops-api" else spec.worker(component)
