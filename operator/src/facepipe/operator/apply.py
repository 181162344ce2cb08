"""Make the cluster hold exactly the desired children: level-based and idempotent.

For each desired object: create it when missing; when the live object does not
contain the desired fields (someone edited or the spec changed), merge-patch the
desired state back; otherwise write nothing. Objects of the managed kinds that
carry this FacePipeline's owner uid but are no longer desired are deleted (e.g. an
HPA after switching to KEDA). A second pass over an unchanged spec writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.utils import parse_quantity

from facepipe.operator.constants import LABEL_INSTANCE, LABEL_MANAGED_BY, OPERATOR_NAME
from facepipe.operator.kube import MANAGED_KINDS, Kind, KubeApi, KubeApiError, kind_of

_QUANTITY_PARENTS = {"limits", "requests", "averageValue"}


def contains(actual: Any, desired: Any, parent: str = "") -> bool:
    """Whether ``actual`` holds every field of ``desired`` (dicts partially, lists item by item).

    Fields the API server adds (defaults, status, resourceVersion) do not count as
    differences; lists must have the same length. Quantities compare by value
    ("500m" == "0.5"), as the API server may rewrite them.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and contains(actual[key], value, str(key)) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(desired)
            and all(contains(a, d, parent) for a, d in zip(actual, desired, strict=True))
        )
    if actual == desired:
        return True
    if parent in _QUANTITY_PARENTS or _is_quantity_key(parent):
        try:
            return parse_quantity(actual) == parse_quantity(desired)
        except (ValueError, TypeError):
            return False
    return False


def _is_quantity_key(key: str) -> bool:
    # Resource names inside limits/requests (cpu, memory, nvidia.com/gpu) arrive as the parent key.
    return key in {"cpu", "memory", "ephemeral-storage"} or "/" in key


def _patch_for(actual: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    patch = {key: value for key, value in desired.items() if key not in ("apiVersion", "kind", "status")}
    if desired.get("kind") == "ConfigMap":
        # The ConfigMap is exactly the settings: keys that left the spec leave the ConfigMap.
        stale = {key: None for key in (actual.get("data") or {}) if key not in (desired.get("data") or {})}
        patch["data"] = {**(desired.get("data") or {}), **stale}
    return patch


@dataclass
class ApplyResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    live: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Kind/name" → object as stored

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)


def _ref(manifest: Mapping[str, Any]) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def apply_children(
    api: KubeApi, namespace: str, owner_name: str, owner_uid: str, desired: Sequence[Mapping[str, Any]]
) -> ApplyResult:
    result = ApplyResult()
    for manifest in desired:
        kind = kind_of(manifest)
        name = manifest["metadata"]["name"]
        actual = api.get(kind, namespace, name)
        if actual is None:
            try:
                result.live[_ref(manifest)] = api.create(manifest)
                result.created.append(_ref(manifest))
                continue
            except KubeApiError as exc:
                if not exc.conflict:  # created meanwhile by a concurrent pass: compare below
                    raise
                actual = api.get(kind, namespace, name) or {}
        if contains(actual, manifest):
            result.live[_ref(manifest)] = actual
            continue
        result.live[_ref(manifest)] = api.patch(kind, namespace, name, _patch_for(actual, manifest))
        result.updated.append(_ref(manifest))
    wanted = {_ref(m) for m in desired}
    for kind in MANAGED_KINDS:
        for obj in owned_children(api, kind, namespace, owner_name, owner_uid):
            ref = f"{kind.kind}/{obj['metadata']['name']}"
            if ref not in wanted and api.delete(kind, namespace, obj["metadata"]["name"]):
                result.deleted.append(ref)
    return result


def owned_children(
    api: KubeApi, kind: Kind, namespace: str, owner_name: str, owner_uid: str
) -> list[dict[str, Any]]:
    """The objects of ``kind`` this FacePipeline (by uid) owns."""
    selector = f"{LABEL_MANAGED_BY}={OPERATOR_NAME},{LABEL_INSTANCE}={owner_name}"
    try:
        items = api.list(kind, namespace, selector)
    except KubeApiError as exc:
        # Not installed (KEDA) or not granted to us (RBAC without KEDA): then we cannot have made any.
        if exc.not_found or exc.status == 403:
            return []
        raise
    return [
        obj
        for obj in items
        if any(ref.get("uid") == owner_uid for ref in obj["metadata"].get("ownerReferences") or [])
    ]
