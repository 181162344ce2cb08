"""Reading pod templates the way a kubelet and the services would (shared by tests/operator and tests/charts).

- :func:`code_reads`: the settings a component's code reads, found by parsing every
  ``facepipe`` module its entry point imports (transitively) for attribute accesses
  named like a ``Settings`` field. An over-approximation: a module imported for one
  function counts with all of its reads.
- :func:`resolve_env`: a container's environment as the kubelet builds it (literals with
  ``$(VAR)`` expansion, ConfigMap keys, Secrets stubbed, the downward API), ready for
  ``Settings.model_validate``.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices

from facepipe.core.settings import Settings

ENTRY_MODULES = {
    "detector": "facepipe.detector.__main__",
    "embedder": "facepipe.embedder.__main__",
    "indexer": "facepipe.indexer.__main__",
    "ops-api": "facepipe.ops_api.__main__",
}
# Derived names (Settings properties) and the fields behind them.
_PROPERTIES = {
    "ingest_stream": {"redis_stream_name"},
    "detected_stream": {"detected_stream_name", "redis_stream_name"},
    "embedded_stream": {"embedded_stream_name", "redis_stream_name"},
    "pipeline_streams": {"redis_stream_name", "detected_stream_name", "embedded_stream_name"},
    "streams_by_role": {"redis_stream_name", "detected_stream_name", "embedded_stream_name"},
    "qdrant_embedded": {"qdrant_url"},
    "consumer_name": {"redis_consumer_name"},
}


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    return str(alias.choices[0])


def _source(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def _imports(tree: ast.Module) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # submodules imported by name
    return {name for name in found if name.startswith("facepipe.")}


@functools.cache
def import_closure(entry: str) -> dict[str, ast.Module]:
    """Every facepipe module ``entry`` imports, directly or not (and their packages)."""
    trees: dict[str, ast.Module] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in trees:
            continue
        path = _source(name)
        if path is None:
            continue
        trees[name] = ast.parse(path.read_text())
        todo += sorted(_imports(trees[name]))
        parent = name.rpartition(".")[0]
        if parent.count(".") >= 1:
            todo.append(parent)  # importing a.b.c runs a.b's __init__
    return trees


@functools.cache
def code_reads(component: str) -> frozenset[str]:
    """Primary env names of the settings the component's code may read."""
    fields = set(Settings.model_fields)
    read: set[str] = set()
    for module, tree in import_closure(ENTRY_MODULES[component]).items():
        if module == "facepipe.core.settings":
            continue  # defines every field; reading happens elsewhere
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                if node.attr in fields:
                    read.add(node.attr)
                read |= _PROPERTIES.get(node.attr, set())
    return frozenset(env_name(field) for field in read)


# Reads the import scan sees that the component never makes: the embedder imports
# facepipe.vision.imaging for decode_jpeg and facepipe.vision.models for create_embedder,
# whose modules also hold the whole-image limits, the quality gates and create_detector.
SCAN_OVERREACH: dict[str, frozenset[str]] = {
    "embedder": frozenset(
        {
            "DET_SIZE",
            "DET_THRESHOLD",
            "MIN_FACE_SIZE",
            "MIN_DET_SCORE",
            "MIN_BLUR_VARIANCE",
            "MAX_POSE_RATIO",
            "MAX_IMAGE_BYTES",
            "MAX_IMAGE_PIXELS",
            "MAX_IMAGE_SIDE",
        }
    ),
}


def component_reads(component: str) -> frozenset[str]:
    """:func:`code_reads` less the scan's known overreach."""
    return code_reads(component) - SCAN_OVERREACH.get(component, frozenset())


# --------------------------------------------------------------------------- pod environment

_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
SECRET_STUBS = {"REDIS_URL": "redis://from-a-secret:6379/0"}


def resolve_env(
    container: Mapping[str, Any], config_maps: Mapping[str, Mapping[str, str]], pod_name: str = "pod-0"
) -> dict[str, str]:
    """The container's env as the kubelet resolves it (Secrets stubbed: their values are unknown here)."""
    env: dict[str, str] = {}
    for ref in container.get("envFrom") or []:
        if "configMapRef" in ref:
            env.update(config_maps[ref["configMapRef"]["name"]])
    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry:
            env[name] = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), str(entry["value"]))
            continue
        source = entry["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = config_maps[ref["name"]][ref["key"]]
        elif "secretKeyRef" in source:
            env[name] = SECRET_STUBS.get(name, f"secret:{source['secretKeyRef']['name']}")
        elif "fieldRef" in source:
            fields = {"metadata.name": pod_name, "metadata.namespace": "ns"}
            env[name] = fields[source["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"unexpected env source {source}")
    return env

