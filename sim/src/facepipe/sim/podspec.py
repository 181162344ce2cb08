"""What a pod spec asks of a node, checked and translated before anything runs (pure functions).

``check_pod`` refuses what the stand-in cannot honour (host namespaces, privileged mode,
hostPath and unknown volume types, hostPort, lifecycle hooks, gRPC probes, sidecars,
adding capabilities) so that a pod never silently runs as something else than its spec.
``schedule`` is the one-node scheduler's verdict. ``identity`` resolves the user and groups
(image USER, runAsUser/runAsGroup/fsGroup, runAsNonRoot refused for root) and ``command``
the argv (command/args over the image's ENTRYPOINT/CMD, with ``$(VAR)`` expansion).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from facepipe.sim.images import ImageRecipe

NODE_NAME = "sim-node"
NODE_LABELS = {
    "kubernetes.io/hostname": NODE_NAME,
    "kubernetes.io/os": "linux",
    "kubernetes.io/arch": "amd64",
}
# What the node offers the scheduler: generous CPU and memory (no limits are enforced, and this
# machine's two cores would otherwise refuse the charts' requests), and no extended resources.
NODE_CAPACITY = {"cpu": "64", "memory": "256Gi", "pods": "250", "ephemeral-storage": "100Gi"}
VOLUME_TYPES = {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "downwardAPI"}
SUPPORTED_PROBES = {"httpGet", "tcpSocket", "exec"}


class Unsupported(Exception):
    """The pod asks for something this node cannot honour; the message says what."""


class ConfigError(Exception):
    """What kubelet reports as CreateContainerConfigError (a missing Secret key, root with runAsNonRoot)."""


def containers(pod: Mapping[str, Any], *, init: bool) -> list[dict[str, Any]]:
    return list((pod.get("spec") or {}).get("initContainers" if init else "containers") or [])


def check_pod(pod: Mapping[str, Any]) -> None:
    spec = pod.get("spec") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        if spec.get(field):
            raise Unsupported(f"spec.{field} is not supported by the cluster simulation")
    if spec.get("hostUsers") is False:
        raise Unsupported(
            "spec.hostUsers: false (a user namespace) is not supported by the cluster simulation"
        )
    if spec.get("ephemeralContainers"):
        raise Unsupported("ephemeral containers are not supported by the cluster simulation")
    for volume in spec.get("volumes") or []:
        kinds = [k for k in volume if k != "name"]
        if len(kinds) != 1 or kinds[0] not in VOLUME_TYPES:
            raise Unsupported(
                f"volume {volume.get('name')!r}: type {', '.join(kinds) or 'none'} is not supported by the "
                f"cluster simulation (supported: {', '.join(sorted(VOLUME_TYPES))})"
            )
    names = {v.get("name") for v in spec.get("volumes") or []}
    for kind, container in [("initContainer", c) for c in containers(pod, init=True)] + [
        ("container", c) for c in containers(pod, init=False)
    ]:
        where = f"{kind} {container.get('name')!r}"
        if kind == "initContainer" and container.get("restartPolicy"):
            raise Unsupported(f"{where}: sidecar init containers (restartPolicy) are not supported")
        security = container.get("securityContext") or {}
        if security.get("privileged"):
            raise Unsupported(f"{where}: privileged containers are not supported by the cluster simulation")
        if (security.get("capabilities") or {}).get("add"):
            raise Unsupported(f"{where}: adding capabilities is not supported by the cluster simulation")
        if container.get("lifecycle"):
            raise Unsupported(f"{where}: lifecycle hooks are not supported by the cluster simulation")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                raise Unsupported(f"{where}: hostPort {port['hostPort']} is not supported (no node ports)")
            if port.get("protocol", "TCP") != "TCP":
                raise Unsupported(f"{where}: {port['protocol']} ports are not supported (TCP only)")
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(probe_name)
            if probe and not SUPPORTED_PROBES & set(probe):
                raise Unsupported(f"{where}: {probe_name} of type {sorted(probe)} is not supported")
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in names:
                raise Unsupported(f"{where}: volumeMount {mount.get('name')!r} names no volume of the pod")
            if mount.get("subPathExpr"):
                raise Unsupported(f"{where}: subPathExpr is not supported by the cluster simulation")
        if container.get("volumeDevices"):
            raise Unsupported(f"{where}: volumeDevices are not supported by the cluster simulation")


def _requests(pod: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for container in containers(pod, init=True) + containers(pod, init=False):
        resources = container.get("resources") or {}
        names |= set(resources.get("requests") or {}) | set(resources.get("limits") or {})
    return names


def schedule(pod: Mapping[str, Any]) -> str | None:
    """None when the pod fits this node, else the scheduler's message (the pod stays Pending)."""
    spec = pod.get("spec") or {}
    wrong = {k: v for k, v in (spec.get("nodeSelector") or {}).items() if NODE_LABELS.get(k) != v}
    if wrong:
        return f"0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector ({wrong})"
    if spec.get("affinity", {}).get("nodeAffinity"):
        return "0/1 nodes are available: nodeAffinity is not evaluated by the cluster simulation"
    missing = sorted(name for name in _requests(pod) if name not in NODE_CAPACITY and "/" in name)
    if missing:
        return f"0/1 nodes are available: 1 Insufficient {', '.join(missing)}"
    return None


# --- user and groups ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]


def _image_user(recipe: ImageRecipe) -> tuple[int | None, int | None, str]:
    """(uid, gid) from the image's USER when numeric; the text for messages."""
    text = recipe.user or "0"
    user, _, group = text.partition(":")
    uid = int(user) if user.isdigit() else None
    if uid is None:
        named = next((u for u in recipe.users if u.name == user), None)
        uid_from_name = named.uid if named else None
        return uid_from_name, (int(group) if group.isdigit() else (named.gid if named else None)), text
    if group:
        return uid, int(group) if group.isdigit() else None, text
    primary = next((u.gid for u in recipe.users if u.uid == uid), None)
    return uid, primary, text


def identity(pod: Mapping[str, Any], container: Mapping[str, Any], recipe: ImageRecipe) -> Identity:
    pod_security = (pod.get("spec") or {}).get("securityContext") or {}
    security = {**pod_security, **(container.get("securityContext") or {})}
    image_uid, image_gid, text = _image_user(recipe)
    uid = security.get("runAsUser", image_uid)
    if security.get("runAsNonRoot"):
        if "runAsUser" not in security and not text.partition(":")[0].isdigit():
            raise ConfigError(
                f"container has runAsNonRoot and image has non-numeric user ({text}), "
                "cannot verify user is non-root"
            )
        if int(uid) == 0:
            raise ConfigError("container has runAsNonRoot and image will run as root")
    if uid is None:
        raise ConfigError(f"image user {text!r} is not known to the image")
    if "runAsGroup" in security:
        gid = int(security["runAsGroup"])
    elif "runAsUser" in security:  # the runtime looks the user up in the image's /etc/passwd
        gid = next((u.gid for u in recipe.users if u.uid == int(uid)), 0)
    else:
        gid = image_gid or 0
    groups = [gid, *(int(g) for g in pod_security.get("supplementalGroups") or [])]
    if pod_security.get("fsGroup") is not None:
        groups.append(int(pod_security["fsGroup"]))
    return Identity(int(uid), gid, tuple(dict.fromkeys(groups)))


def drops_all_capabilities(container: Mapping[str, Any]) -> bool:
    drop = ((container.get("securityContext") or {}).get("capabilities") or {}).get("drop") or []
    return "ALL" in drop


# --- command -----------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: known names replaced, $$ escapes, unknown references kept."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _REFERENCE.sub(replace, text)


def command(container: Mapping[str, Any], recipe: ImageRecipe, env: Mapping[str, str]) -> list[str]:
    """command/args over ENTRYPOINT/CMD: command replaces both; args alone replace CMD."""
    if container.get("command"):
        argv = [*container["command"], *(container.get("args") or [])]
    elif container.get("args") is not None:
        argv = [*recipe.entrypoint, *container["args"]]
    else:
        return [*recipe.entrypoint, *recipe.cmd]
    return [expand(str(word), env) for word in argv]


def working_dir(container: Mapping[str, Any], recipe: ImageRecipe) -> str:
    return str(container.get("workingDir") or recipe.workdir or "/")
