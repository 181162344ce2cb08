"""Kubernetes helpers shared by tests/operator and tests/charts.

- :func:`code_reads`: the settings a component's code reads, found by parsing every
  ``facepipe`` module its entry point imports (transitively) for attribute accesses
  named like a ``Settings`` field. An over-approximation: a module imported for one
  function counts with all of its reads.
- :func:`resolve_env`: a container's environment as the kubelet builds it (literals with
  ``$(VAR)`` expansion, ConfigMap keys, Secrets stubbed, the downward API), ready for
  ``Settings.model_validate``.
- :func:`restricted_violations`: Pod Security "restricted", as admission would check a pod.
- :func:`helm_install`: a real `helm install` (Helm's Go SDK) against an API server.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
from helm_python import _native
from pydantic import AliasChoices

from facepipe.core.settings import Settings
from facepipe.operator.envmap import DETECTION_AND_QUALITY

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
# ops-api builds its dedup cache with DedupConfig.from_settings, which also reads the claim
# TTL; only the indexer claims faces.
SCAN_OVERREACH: dict[str, frozenset[str]] = {
    "embedder": frozenset(DETECTION_AND_QUALITY),
    "ops-api": frozenset({"DEDUP_CLAIM_TTL_SECONDS"}),
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



# --------------------------------------------------------------------------- Pod Security "restricted"

# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (v1.33): the checks of
# the baseline and restricted profiles, as the PodSecurity admission plugin applies them.
_RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """Why Pod Security "restricted" would refuse this pod spec (empty: admitted)."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is true")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']}: type {sorted(kinds)} not allowed")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in _SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} is not safe")
    if (pod_sc.get("seLinuxOptions") or {}).get("user") or (pod_sc.get("seLinuxOptions") or {}).get("role"):
        problems.append("pod seLinuxOptions user/role set")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser is 0")
    if (pod_sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append("pod AppArmor profile Unconfined")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        problems.append("pod seccomp Unconfined")
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    for container in containers:
        name = container["name"]
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        added = set(caps.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:  # restricted; baseline would allow _BASELINE_CAPABILITIES
            problems.append(f"{name}: adds capabilities {sorted(added - {'NET_BIND_SERVICE'})}")
        if not (sc.get("runAsNonRoot") is True or (pod_sc.get("runAsNonRoot") is True
                                                   and sc.get("runAsNonRoot") is not False)):
            problems.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser is 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost (pod or container)")
        if sc.get("procMount") not in (None, "Default"):
            problems.append(f"{name}: procMount {sc['procMount']}")
        if (sc.get("seLinuxOptions") or {}).get("user") or (sc.get("seLinuxOptions") or {}).get("role"):
            problems.append(f"{name}: seLinuxOptions user/role set")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            problems.append(f"{name}: hostProcess")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort {port['hostPort']}")
    return problems


# --------------------------------------------------------------------------- helm install


def helm_install(
    chart: Path, values: dict[str, Any], kubeconfig: Path, name: str, namespace: str
) -> dict[str, Any]:
    """`helm install` for real (the Go SDK) against an API server; the release as a dict.

    OpenAPI validation is off because the emulator serves no OpenAPI documents (the
    documents are validated offline with kubernetes-validate in other tests); everything
    else is Helm's own install: discovery (.Capabilities), CRDs from crds/, REST mapping of
    every kind ("ensure CRDs are installed first" when one is unknown), creates.
    """
    chart_handle = helm.Chart.load(str(chart))
    config = helm.Config(kubeconfig_path=str(kubeconfig), namespace=namespace, storage_driver="memory")
    try:
        payload = _native.call_string(
            "helm_install",
            config._raw(),
            config._context_arg(None),
            chart_handle._raw(),
            None,
            name,
            json.dumps(values),
            json.dumps(
                {
                    "namespace": namespace,
                    "timeout_seconds": 60,
                    "disable_openapi_validation": True,
                    "server_side_apply": False,  # the emulator has no apply patches; Helm 3 did not either
                }
            ),
        )
    finally:
        config.close()
    return dict(json.loads(payload))
