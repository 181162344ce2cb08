"""What the API server records about who set which field of an object (``metadata.managedFields``).

Server-side apply keeps, per field manager, the set of fields it owns (``fieldsV1``: ``f:<field>``
for a map key, ``k:{...}`` for a list item by its keys, ``v:<value>`` for a set item, ``i:<n>``
for an item by index, ``.`` for the item itself). facepipe.operator.apply reads the operator's
own entry to tell, without writing, whether an apply would change anything, and moves the
fields the operator wrote before it applied server-side into that entry (pure functions here).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from facepipe.operator.constants import OPERATOR_NAME

FIELD_MANAGER: Final = OPERATOR_NAME
# The manager the API server recorded for the operator's creates and merge patches before it
# applied server-side: the kubernetes client's User-Agent ("OpenAPI-Generator/<v>/python") up
# to its first "/". Any other client with that default User-Agent is recorded the same way.
LEGACY_MANAGERS: Final = frozenset({"OpenAPI-Generator"})


def applied_entry(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The operator's own server-side apply entry of the main resource, if it ever applied ``obj``."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if (
            entry.get("manager") == FIELD_MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            return dict(entry)
    return None


def owns(entry: Mapping[str, Any] | None, *path: str) -> bool:
    """Whether ``entry`` owns the map field at ``path`` (e.g. ``"spec", "replicas"``)."""
    fields: Any = (entry or {}).get("fieldsV1") or {}
    for name in path:
        if not isinstance(fields, Mapping) or f"f:{name}" not in fields:
            return False
        fields = fields[f"f:{name}"]
    return True


def within(fields: Mapping[str, Any], value: Any) -> bool:
    """Whether every field of the set ``fields`` is present in ``value`` (a manifest or part of one).

    False when the set holds a field ``value`` lacks: applying ``value`` would remove it.
    Unknown key kinds count as absent, so a doubt never skips an apply.
    """
    for key, sub in fields.items():
        if key == ".":
            continue
        prefix, _, rest = key.partition(":")
        if prefix == "f":
            if not isinstance(value, Mapping) or rest not in value or not within(sub, value[rest]):
                return False
        elif prefix == "k":
            wanted = json.loads(rest)
            match = next(
                (
                    item
                    for item in (value if isinstance(value, list) else [])
                    if isinstance(item, Mapping) and all(_same(item.get(k), v) for k, v in wanted.items())
                ),
                None,
            )
            if match is None or not within(sub, match):
                return False
        elif prefix == "v":
            if not isinstance(value, list) or json.loads(rest) not in value:
                return False
        elif prefix == "i":
            index = int(rest)
            if not isinstance(value, list) or index >= len(value) or not within(sub, value[index]):
                return False
        else:
            return False
    return True


def _same(actual: Any, key_value: Any) -> bool:
    # Keys of list items are strings or integers (a port, a protocol); the set holds them as JSON.
    return actual == key_value or (actual is not None and str(actual) == str(key_value))


def union(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two field sets in one."""
    merged = {key: dict(value) if isinstance(value, Mapping) else value for key, value in a.items()}
    for key, value in b.items():
        merged[key] = union(merged[key], value) if key in merged else value
    return merged


def adopted(managed: Sequence[Mapping[str, Any]], api_version: str) -> list[dict[str, Any]] | None:
    """``managedFields`` with the legacy managers' fields moved into the operator's apply entry.

    Before it applied server-side the operator created and merge-patched its children, so the
    API server holds their fields under an Update entry of the client's User-Agent. A field owned
    there stays when the operator's apply stops giving it (another manager holds it), so on an
    object the operator never applied, those entries become its own Apply entry first, as
    ``kubectl apply --server-side`` does for objects it client-side applied before. None: no
    legacy entry of that apiVersion, nothing to move.
    """
    legacy = [
        entry
        for entry in managed
        if entry.get("manager") in LEGACY_MANAGERS
        and entry.get("operation") == "Update"
        and not entry.get("subresource")
        and entry.get("apiVersion") == api_version
        and entry.get("fieldsType") == "FieldsV1"
    ]
    if not legacy:
        return None
    fields: dict[str, Any] = {}
    for entry in legacy:
        fields = union(fields, entry.get("fieldsV1") or {})
    rest = [dict(entry) for entry in managed if entry not in legacy]
    ours = next((entry for entry in rest if applied_entry({"metadata": {"managedFields": [entry]}})), None)
    if ours is not None:
        ours["fieldsV1"] = union(ours.get("fieldsV1") or {}, fields)
        return rest
    entry: dict[str, Any] = {"manager": FIELD_MANAGER, "operation": "Apply", "apiVersion": api_version}
    times = [str(e["time"]) for e in legacy if e.get("time")]
    if times:
        entry["time"] = max(times)
    return [*rest, {**entry, "fieldsType": "FieldsV1", "fieldsV1": fields}]
