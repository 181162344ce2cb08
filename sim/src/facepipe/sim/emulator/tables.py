"""``kubectl get`` tables: the CRD's printer columns, and a few built-in columns per kind."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import kmock
from kmock._internal import rendering

Resource = kmock.resource


def wants_table(request: rendering.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _json_path(obj: Mapping[str, Any], path: str) -> Any:
    current: Any = obj
    for part in path.strip(".").split("."):
        current = current.get(part) if isinstance(current, Mapping) else None
    return current


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _ready(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    return f"{status.get('readyReplicas', 0)}/{(obj.get('spec') or {}).get('replicas', '-')}"


def _pod_ready(obj: Mapping[str, Any]) -> str:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    containers = (obj.get("spec") or {}).get("containers") or []
    return f"{sum(1 for c in statuses if c.get('ready'))}/{len(containers)}"


def _pod_status(obj: Mapping[str, Any]) -> str:
    """kubectl's STATUS: Terminating, else a waiting/terminated reason, else the phase."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            state = container.get("state") or {}
            ended = state.get("waiting") or state.get("terminated") or {}
            reason = ended.get("reason")
            if reason and reason != "Completed":
                return str(reason)
            if key == "initContainerStatuses" and state.get("running"):
                return "Init:Running"
    return str(status.get("phase", "Pending"))


def _restarts(obj: Mapping[str, Any]) -> int:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return sum(int(c.get("restartCount", 0)) for c in statuses)


_BUILTIN_COLUMNS: dict[str, list[tuple[str, str, Any]]] = {
    "pods": [
        ("Ready", "string", _pod_ready),
        ("Status", "string", _pod_status),
        ("Restarts", "integer", _restarts),
        ("IP", "string", lambda o: (o.get("status") or {}).get("podIP", "<none>")),
    ],
    "replicasets": [
        ("Desired", "integer", lambda o: (o.get("spec") or {}).get("replicas", 0)),
        ("Current", "integer", lambda o: (o.get("status") or {}).get("replicas", 0)),
        ("Ready", "integer", lambda o: (o.get("status") or {}).get("readyReplicas", 0)),
    ],
    "deployments": [
        ("Ready", "string", _ready),
        ("Up-to-date", "integer", lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
        ("Available", "integer", lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
    ],
    "configmaps": [("Data", "integer", lambda o: len(o.get("data") or {}))],
    "services": [
        ("Type", "string", lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
        (
            "Port(s)",
            "string",
            lambda o: ",".join(
                f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in (o.get("spec") or {}).get("ports", [])
            ),
        ),
    ],
    "horizontalpodautoscalers": [
        ("Reference", "string", lambda o: "Deployment/" + str(_json_path(o, ".spec.scaleTargetRef.name"))),
        ("MinPods", "integer", lambda o: _json_path(o, ".spec.minReplicas")),
        ("MaxPods", "integer", lambda o: _json_path(o, ".spec.maxReplicas")),
        ("Replicas", "integer", lambda o: _json_path(o, ".status.currentReplicas") or 0),
    ],
    "scaledobjects": [
        ("ScaleTargetName", "string", lambda o: _json_path(o, ".spec.scaleTargetRef.name")),
        ("Min", "integer", lambda o: _json_path(o, ".spec.minReplicaCount")),
        ("Max", "integer", lambda o: _json_path(o, ".spec.maxReplicaCount")),
        (
            "Triggers",
            "string",
            lambda o: ",".join(t.get("type", "") for t in _json_path(o, ".spec.triggers") or []),
        ),
    ],
}


def kubectl_table(
    res: Resource,
    items: list[dict[str, Any]],
    revision: str,
    printer_columns: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """``kubectl get``'s Table: Name, the CRD's printer columns (else a few built-in ones), Age."""
    columns = [("Name", "string", lambda o: o["metadata"]["name"])]
    columns += _columns_for(res, printer_columns)
    columns.append(("Age", "string", lambda o: _age(o["metadata"].get("creationTimestamp"))))
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": revision},
        "columnDefinitions": [
            {
                "name": name,
                "type": kind,
                "format": "name" if name == "Name" else "",
                "description": "",
                "priority": 0,
            }
            for name, kind, _ in columns
        ],
        "rows": [
            {
                "cells": [fn(obj) for _, _, fn in columns],
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                },
            }
            for obj in items
        ],
    }


def _columns_for(res: Resource, printer_columns: list[dict[str, Any]] | None) -> list[tuple[str, str, Any]]:
    if printer_columns is not None:
        columns = []
        for column in printer_columns:
            if column.get("jsonPath") == ".metadata.creationTimestamp":
                continue  # the generic Age column
            path = column["jsonPath"]
            columns.append(
                (column["name"], column.get("type", "string"), lambda o, path=path: _json_path(o, path))
            )
        return columns
    return _BUILTIN_COLUMNS.get(res.plural, [])
