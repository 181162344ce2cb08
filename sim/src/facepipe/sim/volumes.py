"""A pod's volumes as host folders, and each container's mounts of them.

emptyDir: a folder of the pod (mode 0777, gone with the pod). persistentVolumeClaim: a
folder per claim (``<state>/claims/<namespace>/<claim>``, kept across pods, as a
local-path provisioner would: mode 0777), which the claim must exist for. configMap,
secret, downwardAPI: files written once at pod start (keys or ``items``, ``defaultMode``),
always mounted read-only. ``fsGroup`` owns the writable volumes (group, setgid). A mount's
``readOnly`` (or the claim's) makes it a read-only bind; ``subPath`` mounts a part.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from facepipe.sim.apiclient import PVC, Api, Informer
from facepipe.sim.podenv import Cluster, field_value, resource_value
from facepipe.sim.podspec import ConfigError
from facepipe.sim.rootfs import Mount


class VolumeNotReady(Exception):
    """The volume cannot be set up yet (e.g. its claim does not exist): the pod waits, and retries."""


@dataclass(frozen=True)
class HostVolume:
    path: Path
    read_only: bool  # forced by the volume type or the claim


def _write_files(folder: Path, files: dict[str, tuple[bytes, int]]) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for relative, (content, mode) in files.items():
        target = folder / relative
        if ".." in Path(relative).parts or Path(relative).is_absolute():
            raise ConfigError(f"volume item path {relative!r} must be relative and stay inside the volume")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chmod(target, mode)
    os.chmod(folder, 0o755)


def _object_files(
    kind: str, obj: Mapping[str, Any] | None, source: Mapping[str, Any], name: str
) -> dict[str, tuple[bytes, int]] | None:
    if obj is None:
        if source.get("optional"):
            return {}
        raise VolumeNotReady(f'{kind.lower()} "{name}" not found')
    data: dict[str, bytes] = {}
    if kind == "Secret":
        data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
    else:
        data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    default_mode = int(source.get("defaultMode", 0o644))
    if not source.get("items"):
        return {key: (value, default_mode) for key, value in data.items()}
    files = {}
    for item in source["items"]:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise ConfigError(f"configmap/secret {name}: no key {item['key']!r}")
        files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
    return files


def _own_for_group(path: Path, gid: int) -> None:
    """fsGroup: the volume and its files belong to the group (which may write where the owner may)."""
    for folder, dirs, files in os.walk(path):
        for entry in [
            folder,
            *(os.path.join(folder, d) for d in dirs),
            *(os.path.join(folder, f) for f in files),
        ]:
            os.chown(entry, -1, gid)
            mode = os.stat(entry).st_mode
            os.chmod(entry, mode | (0o2070 if os.path.isdir(entry) else 0o040 | (mode & 0o200) >> 3))


class PodVolumes:
    def __init__(
        self, pod: Mapping[str, Any], folder: Path, claims: Path, cluster: Cluster, pod_ip: str
    ) -> None:
        self.pod = pod
        self.folder = folder
        self.claims = claims
        self.cluster = cluster
        self.pod_ip = pod_ip
        self.volumes: dict[str, HostVolume] = {}

    def prepare(self, claim_exists: Any) -> None:
        """Set every volume up (``claim_exists(namespace, name) -> bool``)."""
        spec = self.pod.get("spec") or {}
        namespace = self.pod["metadata"]["namespace"]
        fs_group = (spec.get("securityContext") or {}).get("fsGroup")
        for volume in spec.get("volumes") or []:
            name = volume["name"]
            path = self.folder / "volumes" / name
            if "emptyDir" in volume:
                path.mkdir(parents=True, exist_ok=True)
                os.chmod(path, 0o777)
                self.volumes[name] = HostVolume(path, False)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]
                if not claim_exists(namespace, claim["claimName"]):
                    raise VolumeNotReady(f'persistentvolumeclaim "{claim["claimName"]}" not found')
                path = claim_folder(self.claims, namespace, claim["claimName"])
                self.volumes[name] = HostVolume(path, bool(claim.get("readOnly")))
            elif "configMap" in volume or "secret" in volume:
                kind, source = (
                    ("ConfigMap", volume["configMap"])
                    if "configMap" in volume
                    else ("Secret", volume["secret"])
                )
                object_name = source.get("name") if kind == "ConfigMap" else source.get("secretName")
                getter = self.cluster.config_map if kind == "ConfigMap" else self.cluster.secret
                files = _object_files(kind, getter(namespace, object_name), source, object_name)
                _write_files(path, files or {})
                self.volumes[name] = HostVolume(path, True)
            elif "downwardAPI" in volume:
                self.volumes[name] = HostVolume(self._downward(path, volume["downwardAPI"]), True)
            if fs_group is not None:
                _own_for_group(self.volumes[name].path, int(fs_group))

    def _downward(self, path: Path, source: Mapping[str, Any]) -> Path:
        files = {}
        containers = (self.pod.get("spec") or {}).get("containers") or []
        default_mode = int(source.get("defaultMode", 0o644))
        for item in source.get("items") or []:
            if "fieldRef" in item:
                value = field_value(
                    self.pod, item["fieldRef"]["fieldPath"], self.pod_ip, self.cluster.host_ip
                )
            else:
                value = resource_value(
                    self.pod, containers[0] if containers else {}, item["resourceFieldRef"]
                )
            files[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
        _write_files(path, files)
        return path

    def mounts(self, container: Mapping[str, Any]) -> list[Mount]:
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = self.volumes[mount["name"]]
            source = volume.path
            if mount.get("subPath"):
                source = volume.path / mount["subPath"]
                if ".." in Path(mount["subPath"]).parts or Path(mount["subPath"]).is_absolute():
                    raise ConfigError(
                        f"subPath {mount['subPath']!r} must be relative and stay inside the volume"
                    )
                if not source.exists() and not volume.read_only:
                    source.mkdir(parents=True)  # as the kubelet does
                elif not source.exists():
                    raise ConfigError(
                        f"subPath {mount['subPath']!r} does not exist in volume {mount['name']!r}"
                    )
            mounts.append(
                {
                    "kind": "bind",
                    "source": str(source),
                    "target": mount["mountPath"],
                    "readonly": volume.read_only or bool(mount.get("readOnly")),
                    "recursive": True,
                }
            )
        return mounts


def claim_folder(claims: Path, namespace: str, name: str) -> Path:
    path = claims / namespace / name
    if not path.exists():
        path.mkdir(parents=True)
        os.chmod(path, 0o777)
    return path


class ClaimBinder:
    """A local-path provisioner: every claim gets its folder and is marked Bound."""

    def __init__(self, api: Api, claims: Informer, folder: Path) -> None:
        self.api = api
        self.folder = folder
        self.informer = claims
        claims.listeners.append(self._changed)
        self._tasks: set[asyncio.Task[None]] = set()

    def _changed(self, event: str, claim: dict[str, Any]) -> None:
        if event != "DELETED" and (claim.get("status") or {}).get("phase") != "Bound":
            meta = claim["metadata"]
            task = asyncio.get_running_loop().create_task(self._bind(meta["namespace"], meta["name"], claim))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _bind(self, namespace: str, name: str, claim: Mapping[str, Any]) -> None:
        claim_folder(self.folder, namespace, name)
        storage = ((claim.get("spec") or {}).get("resources") or {}).get("requests", {}).get("storage", "1Gi")
        modes = (claim.get("spec") or {}).get("accessModes") or ["ReadWriteOnce"]
        status = {"phase": "Bound", "accessModes": modes, "capacity": {"storage": storage}}
        await self.api.patch(PVC, namespace, name, {"status": status}, subresource="status")

    def exists(self, namespace: str, name: str) -> bool:
        return self.informer.get(namespace, name) is not None
