"""`make cluster-sim` end to end: it starts, serves kubectl, runs pods, and leaves nothing behind.

Stopped by SIGTERM it ends cleanly; killed by SIGKILL, its pods, backing servers and operator
still go (parent-death signals and the guardian), and so does its network.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from operatorkit import REPO_ROOT, wait_for
from simkit import IMAGE, KUBECTL


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (through /proc's children lists)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except FileNotFoundError:
                continue
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state != "Z":
            living.add(pid)
    return living


def interfaces() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    assert KUBECTL
    done = subprocess.run(
        [KUBECTL, "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def cluster_cli(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, set[str]]]:
    if os.geteuid() != 0:
        pytest.skip("the cluster simulation needs root")
    before = interfaces()
    command = [
        sys.executable,
        "-m",
        "facepipe.sim.cluster",
        "--dir",
        str(tmp_path),
        "--backing-namespace",
        "default",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "FACEPIPE_OPERATOR_RESYNC_SECONDS": "2"},
    )  # fmt: skip
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if "Ctrl-C stops." in line or process.poll() is not None:
            break
    assert process.poll() is None, "".join(lines)
    output = "".join(lines)
    assert "Kubernetes API emulator: http://127.0.0.1:" in output
    assert (
        "redis.default.svc:6379" in output
        and "minio.default.svc:9000" in output
        and "qdrant.default.svc:6333" in output
    )
    # Prometheus scraping the operator chart's monitors, and the autoscalers (stopped with the rest).
    assert "ServiceMonitor/face-pipeline-operator-ops-api" in output, output
    assert "PodMonitor/face-pipeline-operator-workers" in output and "Autoscalers:" in output
    yield process, tmp_path / "kubeconfig", before
    if process.poll() is None:
        process.kill()
        process.wait()


def run_a_pod(kubeconfig: Path) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": "default"},
        "spec": {
            "containers": [
                {"name": "main", "image": IMAGE, "command": ["python", "-c", "import time; time.sleep(3600)"]}
            ]
        },
    }
    kubectl(kubeconfig, "apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(manifest))
    wait_for(
        lambda: "Running" in kubectl(kubeconfig, "get", "pods", "-n", "default"),
        timeout=120,
        what="the pod to run",
    )
    assert "sim-node" in kubectl(kubeconfig, "get", "nodes")


def test_sigterm_stops_everything_cleanly(cluster_cli: tuple[subprocess.Popen[str], Path, set[str]]) -> None:
    process, kubeconfig, interfaces_before = cluster_cli
    run_a_pod(kubeconfig)
    tree = descendants(process.pid)
    assert len(tree) >= 7  # operator, redis, seaweedfs, qdrant, prometheus, guardian, the pod's sandbox...
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "stopping" in output
    assert not alive(tree), [Path(f"/proc/{p}/cmdline").read_text() for p in alive(tree)]
    assert not kubeconfig.exists()
    # Its pods' veths and the Service range go with their namespaces.
    wait_for(lambda: interfaces() <= interfaces_before, timeout=60, what="the simulation's interfaces to go")


def test_sigkill_leaves_no_process_behind(cluster_cli: tuple[subprocess.Popen[str], Path, set[str]]) -> None:
    """(Its veths may outlive it for a while, held by orphaned sockets; the next start removes them.)"""
    process, kubeconfig, _ = cluster_cli
    run_a_pod(kubeconfig)
    tree = descendants(process.pid)
    process.kill()
    process.wait()
    deadline = time.monotonic() + 60
    while alive(tree) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(tree), [Path(f"/proc/{p}/cmdline").read_text()[:200] for p in alive(tree)]
