"""A container's environment, resolved as the kubelet resolves it.

From the bottom up: the image's ENV; the Service links of the pod's namespace
(``<NAME>_SERVICE_HOST``, ``<NAME>_PORT`` ..., unless ``enableServiceLinks: false``);
``envFrom`` (ConfigMaps and Secrets, with prefixes); then ``env`` in order, each value
``$(VAR)``-expanded against what precedes it, ``valueFrom`` read from the cluster:
``fieldRef``, ``resourceFieldRef``, ``configMapKeyRef``, ``secretKeyRef``. A missing
object or key that is not optional is a :class:`ConfigError` (CreateContainerConfigError).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils import parse_quantity

from facepipe.sim.images import ImageRecipe
from facepipe.sim.podspec import NODE_CAPACITY, NODE_NAME, ConfigError, expand

Getter = Callable[[str, str], Mapping[str, Any] | None]
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


@dataclass(frozen=True)
class Cluster:
    """Read-only views of the objects a pod's environment may refer to (the kubelet's caches)."""

    config_map: Getter
    secret: Getter
    services: Callable[[str], list[Mapping[str, Any]]]
    host_ip: str = ""


def _data(kind: str, obj: Mapping[str, Any] | None) -> dict[str, str] | None:
    if obj is None:
        return None
    if kind == "Secret":
        values = {
            k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()
        }
        values.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
        return values
    return {k: str(v) for k, v in (obj.get("data") or {}).items()}


def _source(cluster: Cluster, kind: str, namespace: str, name: str) -> dict[str, str] | None:
    getter = cluster.secret if kind == "Secret" else cluster.config_map
    return _data(kind, getter(namespace, name))


def _key_ref(cluster: Cluster, kind: str, namespace: str, ref: Mapping[str, Any]) -> str | None:
    data = _source(cluster, kind, namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
    return data[ref["key"]]


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    meta = pod["metadata"]
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", NODE_NAME),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    if match := _FIELD_KEY.match(path):
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ConfigError(f"fieldRef {path!r} is not supported")


def resource_value(pod: Mapping[str, Any], container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    target = container
    if ref.get("containerName"):
        everyone = (pod.get("spec") or {}).get("containers", []) + (pod.get("spec") or {}).get(
            "initContainers", []
        )
        target = next((c for c in everyone if c.get("name") == ref["containerName"]), None) or {}
        if not target:
            raise ConfigError(f"resourceFieldRef: no container named {ref['containerName']!r}")
    section, _, resource = str(ref["resource"]).partition(".")
    if section not in ("limits", "requests") or resource not in ("cpu", "memory", "ephemeral-storage"):
        raise ConfigError(f"resourceFieldRef {ref['resource']!r} is not supported")
    resources = target.get("resources") or {}
    value = (resources.get(section) or {}).get(resource)
    if value is None and section == "requests":
        value = (resources.get("limits") or {}).get(resource)  # requests default to limits
    if value is None:
        value = NODE_CAPACITY[resource] if section == "limits" else "0"  # no limit: node allocatable
    divisor = parse_quantity(str(ref.get("divisor", "1")))
    return str(math.ceil(parse_quantity(str(value)) / divisor))


def service_links(services: list[Mapping[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for service in services:
        address = (service.get("spec") or {}).get("clusterIP")
        ports = (service.get("spec") or {}).get("ports") or []
        if not address or address == "None" or not ports:
            continue
        name = service["metadata"]["name"].upper().replace("-", "_")
        first = ports[0]
        env[f"{name}_SERVICE_HOST"] = address
        env[f"{name}_SERVICE_PORT"] = str(first["port"])
        env[f"{name}_PORT"] = f"tcp://{address}:{first['port']}"
        for port in ports:
            if port.get("name"):
                env[f"{name}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(port["port"])
            prefix = f"{name}_PORT_{port['port']}_TCP"
            env.update(
                {
                    prefix: f"tcp://{address}:{port['port']}",
                    f"{prefix}_PROTO": "tcp",
                    f"{prefix}_PORT": str(port["port"]),
                    f"{prefix}_ADDR": address,
                }
            )
    return env


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    recipe: ImageRecipe,
    cluster: Cluster,
    pod_ip: str,
) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    spec = pod.get("spec") or {}
    defined: dict[str, str] = {}
    if spec.get("enableServiceLinks", True):
        defined.update(service_links(cluster.services(namespace)))
    for source in container.get("envFrom") or []:
        for field, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            if field not in source:
                continue
            ref = source[field]
            data = _source(cluster, kind, namespace, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
            for key, value in data.items():
                name = source.get("prefix", "") + key
                if _ENV_NAME.match(name):  # the kubelet skips invalid names (and emits an event)
                    defined[name] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            defined[name] = expand(str(var.get("value", "")), defined)
            continue
        source = var["valueFrom"]
        value: str | None
        if "fieldRef" in source:
            value = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, cluster.host_ip)
        elif "resourceFieldRef" in source:
            value = resource_value(pod, container, source["resourceFieldRef"])
        elif "configMapKeyRef" in source:
            value = _key_ref(cluster, "ConfigMap", namespace, source["configMapKeyRef"])
        elif "secretKeyRef" in source:
            value = _key_ref(cluster, "Secret", namespace, source["secretKeyRef"])
        else:
            raise ConfigError(f"env {name}: valueFrom {sorted(source)} is not supported")
        if value is not None:
            defined[name] = value
    return {**recipe.env, **defined}
