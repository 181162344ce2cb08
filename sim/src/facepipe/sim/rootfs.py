"""A container's file system as a list of mounts for the launcher (facepipe.sim.launcher).

An image here is the host's Debian system (the base image's stand-in: /usr and /etc as
writable overlay layers, so writes stay in the container) plus the files the Dockerfile
adds: the environment built at its own path (/app/.venv, read-only), the accounts its
``useradd`` creates, their home folders. The kubelet adds the pod's volumes and /etc/hosts.
Mount targets are paths inside the container; the launcher creates them in a tmpfs root.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from facepipe.sim.images import ImageRecipe

Mount = dict[str, Any]
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
LAUNCHER = Path(__file__).with_name("launcher.py")


def base_system() -> list[Mount]:
    """The base image: the host's system folders as layers, a private /dev, /proc, /tmp, /run."""
    mounts: list[Mount] = [
        {"kind": "overlay", "source": "/usr", "target": "/usr", "image_layer": True},
        {"kind": "overlay", "source": "/etc", "target": "/etc", "image_layer": True},
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = Path("/") / name
        if host.is_symlink():  # merged /usr: /bin -> usr/bin
            mounts.append({"kind": "symlink", "source": os.readlink(host), "target": f"/{name}"})
    mounts += [
        {"kind": "tmpfs", "target": "/dev", "mode": "755"},
        *({"kind": "bind", "source": f"/dev/{d}", "target": f"/dev/{d}"} for d in DEVICES),
        {"kind": "symlink", "source": "/proc/self/fd", "target": "/dev/fd"},
        *(
            {"kind": "symlink", "source": f"/proc/self/fd/{n}", "target": f"/dev/{name}"}
            for n, name in enumerate(("stdin", "stdout", "stderr"))
        ),
        {"kind": "tmpfs", "target": "/dev/shm", "mode": "1777"},
        {"kind": "proc", "target": "/proc"},
        {"kind": "bind", "source": "/sys", "target": "/sys", "recursive": True, "readonly": True},
        {"kind": "tmpfs", "target": "/tmp", "mode": "1777", "image_layer": True},
        {"kind": "tmpfs", "target": "/var/tmp", "mode": "1777", "image_layer": True},
        {"kind": "tmpfs", "target": "/run", "mode": "755", "image_layer": True},
        {"kind": "dir", "target": "/root", "mode": "700"},
    ]
    return mounts


def image_files(recipe: ImageRecipe, environment: Path) -> list[Mount]:
    """What the Dockerfile adds to the base: the environment and its accounts' home folders."""
    mounts: list[Mount] = [
        {"kind": "bind", "source": str(environment), "target": recipe.venv_path, "readonly": True}
    ]
    for user in recipe.users:
        if user.create_home:
            home = {"kind": "dir", "target": user.home, "mode": "755", "uid": user.uid, "gid": user.gid}
            mounts.append(home)
    return mounts


def accounts_files(recipe: ImageRecipe | None, folder: Path) -> list[Mount]:
    """/etc/passwd and /etc/group: the host's, plus the accounts the image creates."""
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    for user in recipe.users if recipe else ():
        passwd += f"{user.name}:x:{user.uid}:{user.gid}::{user.home}:{user.shell}\n"
        group += f"{user.name}:x:{user.gid}:\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "passwd").write_text(passwd)
    (folder / "group").write_text(group)
    return [
        {"kind": "bind", "source": str(folder / "passwd"), "target": "/etc/passwd", "readonly": True},
        {"kind": "bind", "source": str(folder / "group"), "target": "/etc/group", "readonly": True},
    ]


def ordered(mounts: list[Mount]) -> list[Mount]:
    """Parents before children (a volume at /data/x goes after /data), else in the given order."""
    return sorted(mounts, key=lambda m: len(Path(m["target"]).parts))
