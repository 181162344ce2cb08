"""Prometheus' Kubernetes service discovery, computed from the emulator's objects.

The simulated Prometheus cannot watch the emulator itself, so this module produces what its
``kubernetes_sd_configs`` would (roles ``pod`` and ``endpoints``): one target per pod container
port or per Endpoints address and port, each carrying the same ``__meta_kubernetes_*`` labels
(Prometheus 2.42, discovery/kubernetes/pod.go and endpoints.go). The targets are handed to
Prometheus as file_sd groups, and the relabelling prometheus-operator generates
(:mod:`facepipe.sim.scrape_config`) runs inside the real Prometheus on these labels, so the
series end up with the labels a cluster would give them.

Endpoints objects are the endpoints controller's job; when the emulator holds none for a
Service, they are derived here from the Service's selector and the pods, as that controller
would (ready pods as ``addresses``, the others as ``notReadyAddresses``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from facepipe.sim.kubeutil import labels_of, pod_ready, sanitize_label_name

Target = dict[str, str]  # one file_sd target: __address__ plus discovery labels

_PREFIX = "__meta_kubernetes_"


def _object_labels(prefix: str, obj: Mapping[str, Any]) -> dict[str, str]:
    """``<prefix>_label_*``, ``_labelpresent_*``, ``_annotation_*``, ``_annotationpresent_*``."""
    meta = obj.get("metadata") or {}
    out: dict[str, str] = {}
    for key, value in (meta.get("labels") or {}).items():
        out[f"{prefix}_label_{sanitize_label_name(key)}"] = str(value)
        out[f"{prefix}_labelpresent_{sanitize_label_name(key)}"] = "true"
    for key, value in (meta.get("annotations") or {}).items():
        out[f"{prefix}_annotation_{sanitize_label_name(key)}"] = str(value)
        out[f"{prefix}_annotationpresent_{sanitize_label_name(key)}"] = "true"
    return out


def pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    """The pod-level discovery labels, shared by the pod and endpoints roles."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    spec = pod.get("spec") or {}
    ready = "true" if pod_ready(pod) else ("false" if status.get("conditions") else "unknown")
    out = {
        f"{_PREFIX}namespace": str(meta.get("namespace", "")),
        f"{_PREFIX}pod_name": str(meta.get("name", "")),
        f"{_PREFIX}pod_ip": str(status.get("podIP", "")),
        f"{_PREFIX}pod_ready": ready,
        f"{_PREFIX}pod_phase": str(status.get("phase", "")),
        f"{_PREFIX}pod_node_name": str(spec.get("nodeName", "")),
        f"{_PREFIX}pod_host_ip": str(status.get("hostIP", "")),
        f"{_PREFIX}pod_uid": str(meta.get("uid", "")),
        **_object_labels(f"{_PREFIX}pod", pod),
    }
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            out[f"{_PREFIX}pod_controller_kind"] = str(ref.get("kind", ""))
            out[f"{_PREFIX}pod_controller_name"] = str(ref.get("name", ""))
    return out


def _container_labels(container: Mapping[str, Any], init: bool) -> dict[str, str]:
    return {
        f"{_PREFIX}pod_container_name": str(container.get("name", "")),
        f"{_PREFIX}pod_container_image": str(container.get("image", "")),
        f"{_PREFIX}pod_container_init": "true" if init else "false",
    }


def _port_labels(port: Mapping[str, Any]) -> dict[str, str]:
    return {
        f"{_PREFIX}pod_container_port_name": str(port.get("name", "")),
        f"{_PREFIX}pod_container_port_number": str(port.get("containerPort", "")),
        f"{_PREFIX}pod_container_port_protocol": str(port.get("protocol", "TCP")),
    }


def _containers(pod: Mapping[str, Any]) -> Iterable[tuple[Mapping[str, Any], bool]]:
    spec = pod.get("spec") or {}
    for container in spec.get("containers") or []:
        yield container, False
    for container in spec.get("initContainers") or []:
        yield container, True


def pod_role_targets(pods: Iterable[Mapping[str, Any]]) -> list[Target]:
    """Role ``pod``: one target per container port (a port-less container: one bare target)."""
    targets: list[Target] = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue  # Prometheus skips pods without an address
        common = pod_labels(pod)
        for container, init in _containers(pod):
            ports = container.get("ports") or []
            if not ports:
                targets.append({"__address__": ip, **common, **_container_labels(container, init)})
            for port in ports:
                targets.append(
                    {
                        "__address__": f"{ip}:{port.get('containerPort')}",
                        **common,
                        **_container_labels(container, init),
                        **_port_labels(port),
                    }
                )
    return targets


# --- endpoints ---------------------------------------------------------------------------------


def _resolve_target_port(service_port: Mapping[str, Any], pod: Mapping[str, Any]) -> int | None:
    """A Service port's targetPort on one pod: a number, or a container port looked up by name."""
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    for container, init in _containers(pod):
        if init:
            continue
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


def derive_endpoints(service: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The Endpoints object the endpoints controller keeps for a Service with a selector."""
    spec = service.get("spec") or {}
    selector = spec.get("selector")
    if not selector:
        return None  # a selector-less Service has hand-made Endpoints, or none
    meta = service["metadata"]
    subsets: list[dict[str, Any]] = []
    for pod in pods:
        pod_meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if pod_meta.get("namespace") != meta.get("namespace") or not status.get("podIP"):
            continue
        if pod_meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
            continue
        labels = labels_of(pod)
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        ports = []
        for service_port in spec.get("ports") or []:
            number = _resolve_target_port(service_port, pod)
            if number is not None:
                ports.append(
                    {
                        "name": service_port.get("name", ""),
                        "port": number,
                        "protocol": service_port.get("protocol", "TCP"),
                    }
                )
        if not ports:
            continue
        address = {
            "ip": status["podIP"],
            "nodeName": (pod.get("spec") or {}).get("nodeName", ""),
            "targetRef": {"kind": "Pod", "name": pod_meta["name"], "namespace": pod_meta["namespace"]},
        }
        key = "addresses" if pod_ready(pod) else "notReadyAddresses"
        subsets.append({key: [address], "ports": ports})
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(meta.get("labels") or {}),
        },
        "subsets": subsets,
    }


def endpoints_role_targets(
    endpoints: Mapping[str, Any],
    service: Mapping[str, Any] | None,
    pods: Mapping[tuple[str, str], Mapping[str, Any]],
) -> list[Target]:
    """Role ``endpoints``: one target per address and port, with the Service's and the pod's labels."""
    meta = endpoints["metadata"]
    common = {
        f"{_PREFIX}namespace": str(meta.get("namespace", "")),
        f"{_PREFIX}endpoints_name": str(meta.get("name", "")),
        **_object_labels(f"{_PREFIX}endpoints", endpoints),
    }
    if service is not None:
        common[f"{_PREFIX}service_name"] = str(service["metadata"]["name"])
        common.update(_object_labels(f"{_PREFIX}service", service))
    targets: list[Target] = []
    for subset in endpoints.get("subsets") or []:
        addresses = [(a, "true") for a in subset.get("addresses") or []]
        addresses += [(a, "false") for a in subset.get("notReadyAddresses") or []]
        for address, ready in addresses:
            ref = address.get("targetRef") or {}
            for port in subset.get("ports") or []:
                target = {
                    "__address__": f"{address['ip']}:{port['port']}",
                    **common,
                    f"{_PREFIX}endpoint_port_name": str(port.get("name", "")),
                    f"{_PREFIX}endpoint_port_protocol": str(port.get("protocol", "TCP")),
                    f"{_PREFIX}endpoint_ready": ready,
                    f"{_PREFIX}endpoint_hostname": str(address.get("hostname", "")),
                    f"{_PREFIX}endpoint_node_name": str(address.get("nodeName", "")),
                    f"{_PREFIX}endpoint_address_target_kind": str(ref.get("kind", "")),
                    f"{_PREFIX}endpoint_address_target_name": str(ref.get("name", "")),
                }
                pod = (
                    pods.get((str(ref.get("namespace", meta.get("namespace"))), str(ref.get("name"))))
                    if ref
                    else None
                )
                if pod is not None and ref.get("kind") == "Pod":
                    target.update(pod_labels(pod))
                    target.update(_container_for_port(pod, int(port["port"])))
                targets.append(target)
    return targets


def _container_for_port(pod: Mapping[str, Any], number: int) -> dict[str, str]:
    for container, init in _containers(pod):
        for port in container.get("ports") or []:
            if int(port.get("containerPort", -1)) == number:
                return {**_container_labels(container, init), **_port_labels(port)}
    return {}
