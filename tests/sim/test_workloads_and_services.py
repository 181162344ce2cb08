"""Deployments roll and scale through ReplicaSets; Services give pods names, endpoints and a proxy."""

from __future__ import annotations

import socket
from typing import Any

from simkit import (
    IMAGE,
    apply,
    bare_pod,
    get,
    is_ready,
    kubectl,
    phase,
    pods,
    state_of,
    wait_for,
    wait_pod,
    watching,
)

from facepipe.sim.cluster import ClusterSim

SERVE = """
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = socket.create_server(("0.0.0.0", 8080))
while True:
    conn, _ = server.accept()
    conn.sendall(f"{socket.gethostname()} {os.environ.get('VERSION', '')}".encode())
    conn.close()
"""


def deployment(name: str, replicas: int | None, version: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "web",
        "image": IMAGE,
        "command": ["python", "-c", SERVE],
        "env": [{"name": "VERSION", "value": version}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
    }
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 5},
        },
        **spec,
    }
    if replicas is not None:
        body["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": body}


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
            **spec,
        },
    }


def deployment_status(sim: ClusterSim, namespace: str, name: str) -> dict[str, Any]:
    return (get(sim, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") or {}).get("status") or {}


def rolled_out(sim: ClusterSim, namespace: str, name: str, replicas: int) -> dict[str, Any] | None:
    obj = get(sim, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") or {}
    status = obj.get("status") or {}
    done = (
        status.get("observedGeneration") == obj.get("metadata", {}).get("generation")
        and status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and status.get("availableReplicas") == replicas
        and status.get("replicas") == replicas
    )
    return status if done else None


def replica_sets(sim: ClusterSim, namespace: str) -> list[dict[str, Any]]:
    return list((get(sim, f"/apis/apps/v1/namespaces/{namespace}/replicasets") or {}).get("items") or [])


def answer(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=10) as conn:
        return conn.recv(200).decode()


def test_a_rolling_update_keeps_within_max_surge_and_max_unavailable(
    cluster_sim: ClusterSim, sim_namespace: str
) -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    apply(cluster_sim, deployment("web", 3, "v1", strategy=strategy), namespace=sim_namespace)
    wait_for(lambda: rolled_out(cluster_sim, sim_namespace, "web", 3), timeout=120, what="v1 rolled out")
    first = {p["metadata"]["name"] for p in pods(cluster_sim, sim_namespace, "app=web")}
    with watching(cluster_sim, "/apis/apps/v1/replicasets") as watch:
        apply(cluster_sim, deployment("web", 3, "v2", strategy=strategy), namespace=sim_namespace)
        status = wait_for(lambda: rolled_out(cluster_sim, sim_namespace, "web", 3), timeout=180, what="v2")
    # Every decision of the controller, in order: never more than 3 + 1 pods asked for, and never
    # fewer than 3 - 0 available while the old set was scaled down.
    desired: dict[str, int] = {}
    available: dict[str, int] = {}
    for event in watch.events:
        rs = event["object"]
        if rs["metadata"]["namespace"] != sim_namespace:
            continue
        desired[rs["metadata"]["name"]] = rs["spec"].get("replicas", 0)
        available[rs["metadata"]["name"]] = (rs.get("status") or {}).get("availableReplicas", 0)
        assert sum(desired.values()) <= 4, desired
        assert sum(available.values()) >= 3 or len(desired) == 1, (desired, available)
    assert len(desired) == 2  # the old set and the new one
    sets = replica_sets(cluster_sim, sim_namespace)
    hashes = {rs["metadata"]["labels"]["pod-template-hash"] for rs in sets}
    assert len(hashes) == 2 and sum(rs["spec"]["replicas"] for rs in sets) == 3

    # Every pod replaced; the old ones gone for good (not only Terminating).
    def replaced() -> list[dict[str, Any]] | None:
        found = pods(cluster_sim, sim_namespace, "app=web")
        return None if first & {p["metadata"]["name"] for p in found} else found

    now = wait_for(replaced, timeout=60, what="the old pods to end")
    assert {p["metadata"]["labels"]["pod-template-hash"] for p in now} == {
        rs["metadata"]["labels"]["pod-template-hash"] for rs in sets if rs["spec"]["replicas"]
    }
    old_ends = [t for t in cluster_sim.terminations if t.namespace == sim_namespace and t.pod in first]
    assert sorted((t.pod, t.exit_code, t.stop_requested) for t in old_ends) == sorted(
        (name, 0, True) for name in first
    )  # SIGTERM, handled, exit 0
    assert status["conditions"][0]["type"] == "Available" and status["conditions"][0]["status"] == "True"


def test_spec_replicas_scales_up_and_down(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    apply(cluster_sim, deployment("web", None, "v1"), namespace=sim_namespace)  # no replicas: 1
    wait_for(lambda: rolled_out(cluster_sim, sim_namespace, "web", 1), timeout=120, what="one replica")
    patch = '{"spec": {"replicas": 3}}'
    kubectl(cluster_sim, "patch", "deployment", "web", "-n", sim_namespace, "--type=merge", "-p", patch)
    wait_for(lambda: rolled_out(cluster_sim, sim_namespace, "web", 3), timeout=120, what="three replicas")
    kubectl(
        cluster_sim,
        "patch",
        "deployment",
        "web",
        "-n",
        sim_namespace,
        "--type=merge",
        "-p",
        patch.replace("3", "1"),
    )
    wait_for(lambda: rolled_out(cluster_sim, sim_namespace, "web", 1), timeout=120, what="back to one")
    wait_for(lambda: len(pods(cluster_sim, sim_namespace, "app=web")) == 1, timeout=60, what="two pods gone")
    assert len(replica_sets(cluster_sim, sim_namespace)) == 1
    table = kubectl(cluster_sim, "get", "deployments,replicasets,pods", "-n", sim_namespace)
    assert "1/1" in table and "Running" in table


def test_a_service_resolves_balances_and_lists_its_endpoints(
    cluster_sim: ClusterSim, sim_namespace: str
) -> None:
    apply(cluster_sim, deployment("web", 2, "v1"), service("web"), service("web-headless", clusterIP="None"),
          namespace=sim_namespace)  # fmt: skip
    wait_for(lambda: rolled_out(cluster_sim, sim_namespace, "web", 2), timeout=120, what="two replicas")
    backends = {
        p["status"]["podIP"]: p["metadata"]["name"] for p in pods(cluster_sim, sim_namespace, "app=web")
    }
    address = wait_for(lambda: cluster_sim.service_address(sim_namespace, "web"), what="a ClusterIP")

    def endpoints_listed() -> bool:
        endpoints = get(cluster_sim, f"/api/v1/namespaces/{sim_namespace}/endpoints/web") or {}
        listed = {a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses") or []}
        return listed == set(backends)

    wait_for(endpoints_listed, what="the Endpoints to list both pods")
    slices = get(cluster_sim, f"/apis/discovery.k8s.io/v1/namespaces/{sim_namespace}/endpointslices") or {}
    assert {e["addresses"][0] for s in slices["items"] for e in s["endpoints"] if s["metadata"]["labels"][
        "kubernetes.io/service-name"] == "web"} == set(backends)  # fmt: skip
    # From this host (as from any pod): the proxy hands connections to both pods in turn.
    seen = {answer(address, 80).split()[0] for _ in range(6)}
    assert seen == set(backends.values())
    # From a pod: every DNS form of the name; the headless Service names the pods themselves.
    probe = (
        "import socket\n"
        f"for name in ('web', 'web.{sim_namespace}', 'web.{sim_namespace}.svc', "
        f"'web.{sim_namespace}.svc.cluster.local', 'web-headless'):\n"
        "    print(name, sorted(socket.gethostbyname_ex(name)[2]))\n"
        "s = socket.create_connection(('web', 80), timeout=10); print('via', s.recv(100).decode())\n"
    )
    apply(cluster_sim, bare_pod("client", probe), namespace=sim_namespace)
    wait_pod(cluster_sim, sim_namespace, "client", lambda p: phase(p) in ("Succeeded", "Failed"), what="done")
    lines = dict(
        line.split(" ", 1) for line in cluster_sim.logs(sim_namespace, "client", "main").splitlines()
    )
    for name in (
        "web",
        f"web.{sim_namespace}",
        f"web.{sim_namespace}.svc",
        f"web.{sim_namespace}.svc.cluster.local",
    ):
        assert lines[name] == str([address]), (name, lines)
    assert lines["web-headless"] == str(sorted(backends))
    assert lines["via"].split()[0] in backends.values()


def test_a_service_without_ready_endpoints_refuses_connections(
    cluster_sim: ClusterSim, sim_namespace: str
) -> None:
    container = {
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    never_ready = bare_pod(
        "lonely",
        "import time\ntime.sleep(3600)",
        restart="Always",
        labels={"app": "web"},
        container=container,
        terminationGracePeriodSeconds=1,  # PID 1 without a SIGTERM handler: the grace period, then SIGKILL
    )
    apply(cluster_sim, never_ready, service("web"), namespace=sim_namespace)
    wait_pod(cluster_sim, sim_namespace, "lonely", lambda p: state_of(p)[0] == "running", what="running")
    address = wait_for(lambda: cluster_sim.service_address(sim_namespace, "web"), what="a ClusterIP")
    endpoints = wait_for(
        lambda: get(cluster_sim, f"/api/v1/namespaces/{sim_namespace}/endpoints/web"), what="ep"
    )
    assert [a["ip"] for s in endpoints["subsets"] for a in s.get("notReadyAddresses", [])] == [
        pods(cluster_sim, sim_namespace, "app=web")[0]["status"]["podIP"]
    ]
    assert not is_ready(pods(cluster_sim, sim_namespace, "app=web")[0])
    with socket.create_connection((address, 80), timeout=10) as conn:
        assert conn.recv(100) == b""  # closed at once: nothing to forward to
