"""Make the cluster hold exactly the desired children: level-based and idempotent.

Each desired object is applied server-side (the default mode): sent whole as an apply patch
of field manager ``facepipe-operator`` with ``force``. The API server creates it when missing,
puts back every field it gives that someone changed, and removes every field the operator
applied before and gives no longer: the tolerations of a pipeline moved from cuda to cpu, pull
secrets cleared, a ConfigMap key whose setting left the spec. Fields other managers set and the
operator never gives (a label added by hand, an env entry added with kubectl) are theirs and
stay. An object the operator created or merge-patched before it applied server-side has its
fields moved to the operator's apply entry first (facepipe.operator.managed_fields.adopted),
so those go too once the spec stops giving them.

Objects of the managed kinds that carry this FacePipeline's owner uid but are no longer desired
are deleted (e.g. an HPA after switching to KEDA). A second pass over an unchanged spec writes
nothing (:func:`up_to_date`).

Mode ``merge`` is for API servers without server-side apply, i.e. the development emulator
(facepipe.sim.emulator) only: create, and merge-patch the desired fields when the live object
lacks them. A merge patch never removes a field it does not name, so there a field the spec
stops giving stays (ConfigMap keys excepted).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from kubernetes.utils import parse_quantity

from facepipe.operator.constants import LABEL_INSTANCE, LABEL_MANAGED_BY, OPERATOR_NAME
from facepipe.operator.kube import MANAGED_KINDS, Kind, KubeApi, KubeApiError, kind_of
from facepipe.operator.managed_fields import FIELD_MANAGER, adopted, applied_entry, owns, within

ApplyMode = Literal["server-side", "merge"]
APPLY_MODES: Final[tuple[ApplyMode, ...]] = ("server-side", "merge")


def parse_apply_mode(value: str | None) -> ApplyMode:
    """FACEPIPE_OPERATOR_APPLY: ``server-side`` (unset: the default) or ``merge`` (the emulator)."""
    mode = (value or "server-side").strip()
    for known in APPLY_MODES:
        if mode == known:
            return known
    raise ValueError(f"FACEPIPE_OPERATOR_APPLY={value!r}: one of {', '.join(APPLY_MODES)}")


_QUANTITY_PARENTS = {"limits", "requests", "averageValue"}


def contains(actual: Any, desired: Any, parent: str = "") -> bool:
    """Whether ``actual`` holds every field of ``desired`` (dicts partially, lists item by item).

    Fields the API server adds (defaults, status, resourceVersion) do not count as
    differences; lists must have the same length. Quantities compare by value
    ("500m" == "0.5"), as the API server may rewrite them; a ``false`` is absent from what
    it stores (``readOnly: false`` of a volume mount is not written back).
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(
            contains(actual[key], value, str(key)) if key in actual else value is False
            for key, value in desired.items()
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
    """The merge patch of mode ``merge``."""
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


def up_to_date(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether applying ``desired`` server-side would change nothing in ``live``.

    Two ways an apply changes an object: a field ``desired`` gives differs (or is missing) in
    ``live``, which :func:`contains` sees; or a field the operator's last apply gave is missing
    from ``desired``, which the operator's managedFields entry tells. Neither: skip the write.
    Fields ``desired`` gives with the live value but another manager owns are not taken over
    (the apply would only record the operator as co-owner; once the spec stops giving such a
    field it stays, as it would for any field another manager shares).

    Skipping matters: a pass writes nothing, so no request per child every resync and no
    needless work for the API server. (An apply that changes nothing would not bump the
    resourceVersion either, so always applying would be correct too; it would only cost.)
    An object the operator never applied (new, or written by it before server-side apply)
    is never up to date.
    """
    entry = applied_entry(live)
    if entry is None or entry.get("apiVersion") != desired.get("apiVersion"):
        return False
    return contains(live, desired) and within(entry.get("fieldsV1") or {}, desired)


def _hand_over_replicas(live: Mapping[str, Any], desired: Mapping[str, Any]) -> Mapping[str, Any]:
    """A Deployment whose replicas just went to an autoscaler keeps its live count meanwhile.

    With autoscaling on, ``desired`` gives no ``spec.replicas``. Were it dropped from an apply
    while the operator owns it, the API server would remove it and the default (1) would scale
    the Deployment down before the autoscaler acts. So it is given at its live value until the
    autoscaler writes it (the first scale takes the field over from the operator).
    """
    spec = live.get("spec") or {}
    if (
        desired.get("kind") != "Deployment"
        or "replicas" in (desired.get("spec") or {})
        or "replicas" not in spec
        or not owns(applied_entry(live), "spec", "replicas")
    ):
        return desired
    handed = copy.deepcopy(dict(desired))
    handed["spec"] = {"replicas": spec["replicas"], **handed["spec"]}
    return handed


def _apply(
    api: KubeApi, kind: Kind, namespace: str, manifest: Mapping[str, Any], result: ApplyResult
) -> None:
    name = manifest["metadata"]["name"]
    actual = api.get(kind, namespace, name)
    if actual is not None:
        manifest = _hand_over_replicas(actual, manifest)
        if up_to_date(actual, manifest):
            result.live[_ref(manifest)] = actual
            return
        if applied_entry(actual) is None:
            actual = _adopt_legacy_fields(api, kind, namespace, name, actual, manifest["apiVersion"])
    live = api.apply(manifest, field_manager=FIELD_MANAGER, force=True)
    result.live[_ref(manifest)] = live
    if actual is None:
        result.created.append(_ref(manifest))
    elif live["metadata"].get("resourceVersion") != actual["metadata"].get("resourceVersion"):
        result.updated.append(_ref(manifest))


def _adopt_legacy_fields(
    api: KubeApi, kind: Kind, namespace: str, name: str, actual: dict[str, Any], api_version: str
) -> dict[str, Any]:
    """Make the operator's pre-server-side-apply fields of ``actual`` its apply entry's (see module doc)."""
    for _ in range(3):
        managed = adopted(actual["metadata"].get("managedFields") or [], api_version)
        if managed is None:
            return actual
        try:
            return api.json_patch(
                kind,
                namespace,
                name,
                [
                    # Only over the version read: a write in between may have changed the owners.
                    {
                        "op": "test",
                        "path": "/metadata/resourceVersion",
                        "value": actual["metadata"]["resourceVersion"],
                    },
                    {"op": "replace", "path": "/metadata/managedFields", "value": managed},
                ],
            )
        except KubeApiError as exc:
            if exc.status not in (409, 422):
                raise
        fresh = api.get(kind, namespace, name)
        if fresh is None:
            return actual
        actual = fresh
    raise KubeApiError(
        409, "Conflict", f"{kind.kind} {namespace}/{name} kept changing while its fields were adopted"
    )


def _merge(
    api: KubeApi, kind: Kind, namespace: str, manifest: Mapping[str, Any], result: ApplyResult
) -> None:
    name = manifest["metadata"]["name"]
    actual = api.get(kind, namespace, name)
    if actual is None:
        try:
            result.live[_ref(manifest)] = api.create(manifest)
            result.created.append(_ref(manifest))
            return
        except KubeApiError as exc:
            if not exc.conflict:  # created meanwhile by a concurrent pass: compare below
                raise
            actual = api.get(kind, namespace, name) or {}
    if contains(actual, manifest):
        result.live[_ref(manifest)] = actual
        return
    result.live[_ref(manifest)] = api.patch(kind, namespace, name, _patch_for(actual, manifest))
    result.updated.append(_ref(manifest))


def apply_children(
    api: KubeApi,
    namespace: str,
    owner_name: str,
    owner_uid: str,
    desired: Sequence[Mapping[str, Any]],
    *,
    mode: ApplyMode = "server-side",
) -> ApplyResult:
    result = ApplyResult()
    write = _apply if mode == "server-side" else _merge
    for manifest in desired:
        write(api, kind_of(manifest), namespace, manifest, result)
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
