"""The ``scale`` subresource as the HPA and KEDA use it, and the pods a scale target selects.

The autoscalers read ``spec.replicas``, ``status.replicas`` and ``status.selector`` of their
target and write ``spec.replicas``. When the API answers ``/scale`` with a real ``Scale``
object, that is used; when it does not (the emulator serves the parent object there, or 404 /
405), the same figures are read from the Deployment itself and the write is a merge patch of
its ``spec.replicas`` -- what the API server does behind ``/scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facepipe.operator.kube import Kind, KubeApi, KubeApiError
from facepipe.sim.kubeutil import POD, LabelSelector

_SCALABLE = {
    ("apps/v1", "Deployment"): Kind("apps/v1", "Deployment", "deployments"),
    ("apps/v1", "StatefulSet"): Kind("apps/v1", "StatefulSet", "statefulsets"),
    ("apps/v1", "ReplicaSet"): Kind("apps/v1", "ReplicaSet", "replicasets"),
}


class ScaleError(RuntimeError):
    """The target cannot be read or scaled (missing, not a scalable kind, API error)."""


@dataclass(frozen=True)
class Scale:
    namespace: str
    kind: Kind
    name: str
    spec_replicas: int
    status_replicas: int
    selector: str
    via_subresource: bool


def target_kind(ref: Mapping[str, Any]) -> Kind:
    key = (str(ref.get("apiVersion") or "apps/v1"), str(ref.get("kind") or "Deployment"))
    if key not in _SCALABLE:
        raise ScaleError(f"{key[1]} ({key[0]}) is not a scalable kind here")
    return _SCALABLE[key]


class ScaleClient:
    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    def get(self, namespace: str, ref: Mapping[str, Any]) -> Scale:
        kind = target_kind(ref)
        name = str(ref["name"])
        try:
            scale = self.kube.request("GET", kind.path(namespace, name, "scale"))
        except KubeApiError as exc:
            if exc.status not in (404, 405):
                raise ScaleError(f"{kind.kind} {namespace}/{name}: {exc}") from exc
            scale = {}
        if scale.get("kind") == "Scale":
            return Scale(
                namespace,
                kind,
                name,
                int((scale.get("spec") or {}).get("replicas") or 0),
                int((scale.get("status") or {}).get("replicas") or 0),
                str((scale.get("status") or {}).get("selector") or ""),
                True,
            )
        obj = self.kube.get(kind, namespace, name)
        if obj is None:
            raise ScaleError(f'{kind.plural} "{name}" not found in {namespace}')
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas")
        return Scale(
            namespace,
            kind,
            name,
            1 if replicas is None else int(replicas),  # the API server's default
            int((obj.get("status") or {}).get("replicas") or 0),
            str(LabelSelector.parse(spec.get("selector"))) if spec.get("selector") else "",
            False,
        )

    def update(self, scale: Scale, replicas: int) -> None:
        body = {"spec": {"replicas": replicas}}
        try:
            self.kube.patch(
                scale.kind,
                scale.namespace,
                scale.name,
                body,
                subresource="scale" if scale.via_subresource else None,
            )
        except KubeApiError as exc:
            raise ScaleError(f"{scale.kind.kind} {scale.namespace}/{scale.name}: {exc}") from exc

    def pods(self, scale: Scale) -> list[dict[str, Any]]:
        """The pods the target's selector picks (what the HPA's pod lister returns)."""
        if not scale.selector:
            return []
        return self.kube.list(POD, scale.namespace, label_selector=scale.selector)
