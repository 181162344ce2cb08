"""Strategic merge patch, the patch ``kubectl apply`` and ``kubectl patch`` send for built-in kinds.

A JSON merge patch replaces lists whole; a strategic one merges the lists the Kubernetes
API marks ``patchStrategy: merge`` element by element, matched on their merge key
(containers by ``name``, volumeMounts by ``mountPath``, ...), and understands the
directives kubectl writes: ``$setElementOrder/<list>``, ``$patch: delete | replace | merge``,
``$retainKeys`` and ``$deleteFromPrimitiveList/<list>``. ``null`` deletes a key. Lists the
API does not mark (e.g. ``args``, ``tolerations``) are replaced, as the API server does.
"""

from __future__ import annotations

import copy
from typing import Any

# field name -> merge key, for the lists of the kinds this project applies (core, apps, batch).
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists whose merge key depends on where they are: container ports vs Service ports.
PORT_KEYS = {"containerPort", "port"}
MERGED_PRIMITIVE_LISTS = {"finalizers"}


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        for item in items:
            if isinstance(item, dict):
                return next((k for k in ("containerPort", "port") if k in item), None)
        return None
    return MERGE_KEYS.get(field)


def strategic_merge(original: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = copy.deepcopy(original)
    retain = patch.get("$retainKeys")
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    removals = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$deleteFromPrimitiveList/")}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            result[key] = strategic_merge(result.get(key), value) if isinstance(value, dict) else value
            if result[key] is None:
                del result[key]
    for key, values in removals.items():
        result[key] = [item for item in result.get(key) or [] if item not in values]
    for key, order in orders.items():
        result[key] = _ordered(key, result.get(key) or [], order)
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, original: Any, patch: list[Any]) -> list[Any]:
    if not isinstance(original, list):
        original = []
    if field in MERGED_PRIMITIVE_LISTS:
        return [*original, *(item for item in patch if item not in original)]
    key = _merge_key(field, [*patch, *original])
    if key is None:
        if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
            return [item for item in patch if not (isinstance(item, dict) and "$patch" in item)]
        return copy.deepcopy(patch)  # an atomic list: replaced
    merged = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict):
            continue
        if item.get("$patch") == "replace":
            return [i for i in copy.deepcopy(patch) if not (isinstance(i, dict) and i.get("$patch"))]
        index = next((n for n, old in enumerate(merged) if old.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append({k: v for k, v in item.items() if k != "$patch"})
        else:
            merged[index] = strategic_merge(merged[index], item)
    return merged


def _ordered(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    """$setElementOrder: the listed elements in that order first, then any others as they were."""
    key = _merge_key(field, [*order, *items])
    if key is None:
        return items
    wanted = [entry.get(key) if isinstance(entry, dict) else entry for entry in order]
    rank = {value: n for n, value in enumerate(wanted)}
    return sorted(items, key=lambda item: rank.get(item.get(key), len(rank)))
