"""Undo every step: processes, containers, mounts, network namespaces, routes, iptables, cgroups.

Order matters. The controllers stop first (nothing re-creates pods), the pods are deleted so the
kubelet stops their containers and the CNI plugin releases their network, then the node and
the control plane stop, and a sweep removes whatever a crash could have left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from facepipe.testcluster import network
from facepipe.testcluster.layout import RunDir
from facepipe.testcluster.node import ctr
from facepipe.testcluster.procs import Component


def _by_name(components: list[Component]) -> dict[str, Component]:
    return {c.name: c for c in components}


def _drain_pods(run: RunDir, bins: dict[str, Path], timeout: float = 60) -> None:
    """Delete every pod and wait until containerd runs no container (the kubelet stops them)."""
    kubectl = bins.get("kubectl")
    if kubectl is None:
        return
    subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            run.kubeconfig,
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--wait=false",
            "--grace-period=1",
            "--request-timeout=10s",
        ],
        capture_output=True,
        timeout=30,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not ctr(run, "tasks", "ls", "-q").stdout.split():
            return
        time.sleep(0.5)


def _remove_containers(run: RunDir) -> None:
    for task in ctr(run, "tasks", "ls", "-q").stdout.split():
        ctr(run, "tasks", "kill", "-s", "SIGKILL", task)
        ctr(run, "tasks", "rm", "-f", task)
    for container in ctr(run, "containers", "ls", "-q").stdout.split():
        ctr(run, "containers", "rm", container)


def _unmount_under(root: Path) -> None:
    """Unmount everything below ``root``, deepest first."""
    with open("/proc/self/mountinfo") as mounts:
        points = [line.split()[4] for line in mounts]
    prefix = str(root) + "/"
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_iptables_leftovers() -> None:
    """Chains kube-proxy's cleanup leaves (the kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY) and
    CNI portmap chains a crashed pod teardown could leave: jumps to them first, then the chains."""
    for tool in ("iptables", "ip6tables"):
        for table in ("nat", "filter", "mangle"):
            dump = subprocess.run(
                [f"{tool}-save", "-t", table], capture_output=True, text=True
            ).stdout.splitlines()
            ours = [line[1:].split()[0] for line in dump if line.startswith((":KUBE-", ":CNI-"))]
            for rule in dump:
                if rule.startswith("-A ") and any(chain in rule.split() for chain in ours):
                    subprocess.run(
                        [tool, "-t", table, *rule.replace("-A ", "-D ", 1).split()], capture_output=True
                    )
            for chain in ours:
                subprocess.run([tool, "-t", table, "-F", chain], capture_output=True)
            for chain in ours:
                subprocess.run([tool, "-t", table, "-X", chain], capture_output=True)


def _remove_cgroups() -> None:
    """The kubelet's cgroup tree (``kubepods``) in every hierarchy, leaves first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda entry: len(entry[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def teardown(
    run: RunDir, components: list[Component], bins: dict[str, Path], report: Callable[[str], None]
) -> None:
    started = time.monotonic()
    running = _by_name(components)
    for name in ("kube-controller-manager", "kube-scheduler"):
        if name in running:
            running[name].stop()
    if "kubelet" in running and "kube-apiserver" in running and running["kubelet"].alive():
        _drain_pods(run, bins)
    for name in ("kubelet", "kube-proxy"):
        if name in running:
            running[name].stop()
    if "kube-proxy" in bins:
        subprocess.run([bins["kube-proxy"], "--cleanup"], capture_output=True, timeout=60)
    if "containerd" in running and running["containerd"].alive():
        _remove_containers(run)
    for name in ("containerd", "kube-apiserver", "etcd"):
        if name in running:
            running[name].stop()
    # Whatever a crash left: shims (their own sessions), mounts, netns, veths, chains, cgroups.
    subprocess.run(
        ["pkill", "-KILL", "-f", f"containerd-shim-runc-v2 .*-address {run.containerd_socket}"],
        capture_output=True,
    )
    _unmount_under(run.root)
    network.teardown(run)
    _remove_iptables_leftovers()
    _remove_cgroups()
    shutil.rmtree(run.root / "containerd", ignore_errors=True)
    report(f"{'teardown':<34} {time.monotonic() - started:7.1f} s")


def leftovers(run: RunDir) -> list[str]:
    """What a cluster in ``run`` could leave on the machine and still does (empty: nothing)."""
    found: list[str] = []
    marker = str(run.root)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmdline:
                found.append(f"process {proc.name}: {cmdline[:120]}")
    with open("/proc/self/mountinfo") as mounts:
        found += [f"mount {line.split()[4]}" for line in mounts if line.split()[4].startswith(marker)]
    if Path("/var/run/netns").exists():
        found += [f"netns {p.name}" for p in Path("/var/run/netns").glob("cni-*")]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [
        f"link {line.split(':')[1].strip()}"
        for line in links.splitlines()
        if "veth" in line or network.DUMMY in line
    ]
    routes = subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout
    found += [
        f"route {line}"
        for line in routes.splitlines()
        if line.startswith(("unreachable 10.200.", "10.32.", "10.200."))
    ]
    for table in ("nat", "filter"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        found += [
            f"iptables {table} {line}"
            for line in rules.splitlines()
            if line.startswith(":KUBE-") or line.startswith(":CNI-")
        ]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob("*/kubepods")]
    return found
