"""The kubelet stand-in runs pods the way a kubelet would: image, env, volumes, users, probes, restarts.

Every pod here is a real process tree in namespaces of its own, started from the image's
environment built from the Dockerfile; results come back through the pod's logs (what
``kubectl logs`` would show) and its status in the API.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from simkit import (
    IMAGE,
    apply,
    bare_pod,
    container_status,
    is_ready,
    phase,
    pod,
    state_of,
    wait_for,
    wait_pod,
)

from facepipe.sim.cluster import ClusterSim
from facepipe.sim.resource_metrics import PIDS_ANNOTATION

REPORT = """
import json, os, socket, sys
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "cwd": os.getcwd(),
    "hostname": socket.gethostname(), "env": dict(os.environ), "argv": sys.argv,
    "executable": sys.executable, "root": sorted(os.listdir("/")), "pid": os.getpid(),
    "hosts": open("/etc/hosts").read(),
}))
"""


def report(sim: ClusterSim, namespace: str, name: str) -> dict:
    for line in reversed(sim.logs(namespace, name, "main").splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no report in the logs of {name}: {sim.logs(namespace, name, 'main')[-2000:]}")


def finished(sim: ClusterSim, namespace: str, name: str) -> dict:
    return wait_pod(sim, namespace, name, lambda p: phase(p) in ("Succeeded", "Failed"), what="finished")


def test_a_pod_runs_as_its_image_says(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    apply(cluster_sim, bare_pod("plain", REPORT), namespace=sim_namespace)
    done = finished(cluster_sim, sim_namespace, "plain")
    assert phase(done) == "Succeeded"
    kind, terminated = state_of(done)
    assert kind == "terminated" and terminated["exitCode"] == 0 and terminated["reason"] == "Completed"
    seen = report(cluster_sim, sim_namespace, "plain")
    # The Dockerfile's final stage: USER 10001:10001, WORKDIR /home/app, its ENV, /app/.venv.
    assert (seen["uid"], seen["gid"], seen["cwd"]) == (10001, 10001, "/home/app")
    assert seen["env"]["HOME"] == "/home/app" and seen["env"]["MODELS_DIR"] == "/models"
    assert seen["env"]["PATH"].startswith("/app/.venv/bin:")
    assert seen["executable"] == "/app/.venv/bin/python"
    assert seen["pid"] == 1  # PID 1 of its own namespace, as in a container
    assert seen["hostname"] == "plain"
    assert "app" in seen["root"] and "work" not in seen["root"]  # the image's tree, not the host's
    assert done["status"]["podIP"] in seen["hosts"]


def test_args_alone_go_to_the_image_entrypoint(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    """No command: the image's ENTRYPOINT (`sh -c 'exec python -m $FACEPIPE_MODULE "$@"'`) gets the args."""
    manifest = bare_pod("entry", "", container={"command": None, "args": ["--help"]})
    del manifest["spec"]["containers"][0]["command"]
    apply(cluster_sim, manifest, namespace=sim_namespace)
    done = finished(cluster_sim, sim_namespace, "entry")
    assert phase(done) == "Succeeded", cluster_sim.logs(sim_namespace, "entry", "main")
    assert "usage: python -m facepipe.indexer" in cluster_sim.logs(sim_namespace, "entry", "main")


def test_env_comes_from_every_source_kubernetes_has(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
              "data": {"LOG_LEVEL": "DEBUG", "COLOUR": "blue", "bad key": "skipped"}}  # fmt: skip
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "data": {"token": base64.b64encode(b"s3cret").decode()}}  # fmt: skip
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "alpha-api"},
               "spec": {"selector": {"app": "none"}, "ports": [{"name": "http", "port": 8080}]}}  # fmt: skip
    apply(cluster_sim, config, secret, service, namespace=sim_namespace)
    wait_for(lambda: cluster_sim.service_address(sim_namespace, "alpha-api"), what="the Service's address")
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LOG_LEVEL"}}},
        {"name": "MAYBE", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "x", "optional": True}}},
        {
            "name": "MEMORY_MB",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
        {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
        {"name": "GREETING", "value": "$(POD_NAME) in $(POD_NAMESPACE), $$(kept) $(UNKNOWN)"},
        {"name": "MODELS_DIR", "value": "/elsewhere"},  # over the image's ENV
    ]
    container = {
        "env": env,
        "envFrom": [
            {"configMapRef": {"name": "settings"}, "prefix": "CFG_"},
            {"secretRef": {"name": "creds"}},
        ],
        "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "512Mi"}},
    }
    apply(
        cluster_sim,
        bare_pod("env", REPORT, container=container, labels={"tier": "gold"}),
        namespace=sim_namespace,
    )
    done = finished(cluster_sim, sim_namespace, "env")
    seen = report(cluster_sim, sim_namespace, "env")["env"]
    assert seen["POD_NAME"] == "env" and seen["POD_NAMESPACE"] == sim_namespace
    assert seen["POD_IP"] == done["status"]["podIP"] and seen["TIER"] == "gold"
    assert seen["TOKEN"] == "s3cret" and seen["token"] == "s3cret" and seen["LEVEL"] == "DEBUG"
    assert seen["CFG_COLOUR"] == "blue" and "CFG_bad key" not in seen and "MAYBE" not in seen
    assert (seen["MEMORY_MB"], seen["CPU_M"]) == ("512", "250")
    assert seen["GREETING"] == f"env in {sim_namespace}, $(kept) $(UNKNOWN)"
    assert seen["MODELS_DIR"] == "/elsewhere" and seen["METRICS_PORT"] == "9100"  # image ENV underneath
    address = cluster_sim.service_address(sim_namespace, "alpha-api")
    assert seen["ALPHA_API_SERVICE_HOST"] == address and seen["ALPHA_API_PORT"] == f"tcp://{address}:8080"


def test_a_missing_secret_key_holds_the_container_until_it_exists(
    cluster_sim: ClusterSim, sim_namespace: str
) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    apply(cluster_sim, bare_pod("waits", REPORT, container={"env": env}), namespace=sim_namespace)
    waiting = wait_pod(
        cluster_sim, sim_namespace, "waits",
        lambda p: state_of(p)[1].get("reason") == "CreateContainerConfigError", what="a config error",
    )  # fmt: skip
    assert 'secret "later" not found' in state_of(waiting)[1]["message"]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "later"},
        "stringData": {"token": "t"},
    }
    apply(cluster_sim, secret, namespace=sim_namespace)
    finished(cluster_sim, sim_namespace, "waits")
    assert report(cluster_sim, sim_namespace, "waits")["env"]["TOKEN"] == "t"


VOLUMES = """
import json, os, stat
out = {}
out["from_init"] = open("/work/handoff").read()
out["config"] = open("/etc/app/settings.yaml").read()
out["secret_mode"] = oct(stat.S_IMODE(os.stat("/secrets/token").st_mode))
out["claim_sub"] = sorted(os.listdir("/claim"))
out["downward"] = open("/info/name").read()
open("/data/written-by-pod", "w").write("hello host")
for path in ("/etc/app/new", "/secrets/new", "/shared/new", "/info/new"):
    try:
        open(path, "w").write("x")
        out[path] = "written"
    except OSError as exc:
        out[path] = exc.strerror
print(json.dumps(out))
"""


def test_volumes_are_mounted_where_and_how_the_spec_says(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"},
              "data": {"settings": "a: 1\n", "other": "not mounted"}}  # fmt: skip
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tok"}, "stringData": {"token": "t"}}
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply(cluster_sim, config, secret, claim, namespace=sim_namespace)
    folder = cluster_sim.claim_folder(sim_namespace, "data")
    (folder / "models").mkdir(exist_ok=True)
    (folder / "models" / "weights.onnx").write_text("w")
    manifest = bare_pod(
        "vols",
        VOLUMES,
        volumes=[
            {"name": "work", "emptyDir": {}},
            {
                "name": "cfg",
                "configMap": {"name": "app", "items": [{"key": "settings", "path": "settings.yaml"}]},
            },
            {"name": "sec", "secret": {"secretName": "tok", "defaultMode": 0o400}},
            {"name": "claim", "persistentVolumeClaim": {"claimName": "data"}},
            {
                "name": "info",
                "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]},
            },
        ],
        initContainers=[
            {
                "name": "prepare",
                "image": IMAGE,
                "command": ["sh", "-c", "echo -n prepared > /work/handoff"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            },
        ],
        container={
            "volumeMounts": [
                {"name": "work", "mountPath": "/work"},
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "sec", "mountPath": "/secrets"},
                {"name": "claim", "mountPath": "/claim", "subPath": "models", "readOnly": True},
                {"name": "claim", "mountPath": "/data"},
                {"name": "work", "mountPath": "/shared", "readOnly": True},
                {"name": "info", "mountPath": "/info"},
            ]
        },
        securityContext={"runAsUser": 0},  # reads the 0400 secret
    )
    apply(cluster_sim, manifest, namespace=sim_namespace)
    done = finished(cluster_sim, sim_namespace, "vols")
    assert phase(done) == "Succeeded", cluster_sim.logs(sim_namespace, "vols", "main")
    init = done["status"]["initContainerStatuses"][0]
    assert init["state"]["terminated"]["exitCode"] == 0
    ended = {
        (t.container, t.init)
        for t in cluster_sim.terminations
        if (t.namespace, t.pod) == (sim_namespace, "vols")
    }
    assert ended == {("prepare", True), ("main", False)}
    seen = report(cluster_sim, sim_namespace, "vols")
    assert seen["from_init"] == "prepared"  # the init container ran first, into the shared emptyDir
    assert seen["config"] == "a: 1\n" and seen["secret_mode"] == "0o400" and seen["downward"] == "vols"
    assert seen["claim_sub"] == ["weights.onnx"]
    assert (folder / "written-by-pod").read_text() == "hello host"  # the claim is the host folder
    for path in ("/etc/app/new", "/secrets/new", "/shared/new", "/info/new"):
        assert seen[path] == "Read-only file system", path


IDENTITY = """
import json, os
os.makedirs("/scratch/dir", exist_ok=True)
open("/scratch/dir/file", "w").write("x")
info = os.stat("/scratch/dir/file")
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()), "file_gid": info.st_gid}
for name, path in (("tmp", "/tmp/x"), ("home", "/home/app/x")):
    try:
        open(path, "w").write("x"); out[name] = "written"
    except OSError as exc:
        out[name] = exc.strerror
try:
    os.chown("/scratch/dir/file", 1234, -1); out["chown"] = "done"
except OSError as exc:
    out["chown"] = exc.strerror
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("security", "container_security", "expected"),
    [
        (
            {"runAsUser": 2000, "runAsGroup": 3000, "fsGroup": 4000},
            {},
            {"uid": 2000, "gid": 3000, "groups": [3000, 4000], "file_gid": 4000, "tmp": "written",
             "home": "Permission denied", "chown": "Operation not permitted"},
        ),
        (
            {"runAsUser": 0},
            {"capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True},
            {"uid": 0, "gid": 0, "tmp": "Read-only file system", "chown": "Operation not permitted"},
        ),
        ({"runAsUser": 0}, {}, {"uid": 0, "gid": 0, "tmp": "written", "chown": "done"}),
    ],
    ids=["non-root-with-fsgroup", "root-without-capabilities-read-only-root", "root"],
)  # fmt: skip
def test_users_groups_and_security_context_bite(
    cluster_sim: ClusterSim, sim_namespace: str, security: dict, container_security: dict, expected: dict
) -> None:
    manifest = bare_pod(
        "who",
        IDENTITY,
        securityContext=security,
        volumes=[{"name": "scratch", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                   "securityContext": container_security},
    )  # fmt: skip
    apply(cluster_sim, manifest, namespace=sim_namespace)
    done = finished(cluster_sim, sim_namespace, "who")
    assert phase(done) == "Succeeded", cluster_sim.logs(sim_namespace, "who", "main")
    seen = report(cluster_sim, sim_namespace, "who")
    assert {k: seen[k] for k in expected} == expected


WRITES = """
import json
out = {}
for path in ("/tmp/x", "/var/tmp/x", "/x"):
    try:
        open(path, "w").write("x"); out[path] = "written"
    except OSError as exc:
        out[path] = exc.strerror
print(json.dumps(out))
"""


def test_a_volume_over_an_image_folder_stays_writable_on_a_read_only_root(
    cluster_sim: ClusterSim, sim_namespace: str
) -> None:
    """The operator's pods: readOnlyRootFilesystem with an emptyDir at /tmp (over the image's own /tmp)."""
    manifest = bare_pod(
        "ro", WRITES,
        volumes=[{"name": "tmp", "emptyDir": {}}],
        container={"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                   "securityContext": {"readOnlyRootFilesystem": True}},
    )  # fmt: skip
    apply(cluster_sim, manifest, namespace=sim_namespace)
    done = finished(cluster_sim, sim_namespace, "ro")
    assert phase(done) == "Succeeded", cluster_sim.logs(sim_namespace, "ro", "main")
    assert report(cluster_sim, sim_namespace, "ro") == {
        "/tmp/x": "written", "/var/tmp/x": "Read-only file system", "/x": "Read-only file system",
    }  # fmt: skip


def test_run_as_non_root_refuses_a_root_user(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    manifest = bare_pod("rootless", REPORT, securityContext={"runAsNonRoot": True, "runAsUser": 0})
    apply(cluster_sim, manifest, namespace=sim_namespace)
    held = wait_pod(
        cluster_sim, sim_namespace, "rootless",
        lambda p: state_of(p)[1].get("reason") == "CreateContainerConfigError", what="refused",
    )  # fmt: skip
    assert "runAsNonRoot and image will run as root" in state_of(held)[1]["message"]
    assert phase(held) == "Pending" and not cluster_sim.logs(sim_namespace, "rootless", "main")


PROBED = """
import http.server, os, threading, time
checks = 0
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global checks
        checks += 1
        self.send_response(200 if checks <= 4 else 500)  # alive for four liveness checks
        self.end_headers()
    def log_message(self, *args): pass
def ready_later():
    time.sleep(1); open("/tmp/ready", "w").close()
threading.Thread(target=ready_later, daemon=True).start()
print("started", flush=True)
http.server.HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""


def test_probes_gate_readiness_and_restart_a_dead_container(
    cluster_sim: ClusterSim, sim_namespace: str
) -> None:
    container = {
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1,
                          "failureThreshold": 2},
        "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
    }  # fmt: skip
    manifest = bare_pod(
        "probed", PROBED, restart="Always", container=container, terminationGracePeriodSeconds=2
    )
    apply(cluster_sim, manifest, namespace=sim_namespace)
    ready = wait_pod(cluster_sim, sim_namespace, "probed", is_ready, what="Ready (exec readiness probe)")
    assert container_status(ready)["restartCount"] == 0
    restarted = wait_pod(
        cluster_sim, sim_namespace, "probed", lambda p: container_status(p).get("restartCount", 0) >= 1,
        what="restarted by its liveness probe",
    )  # fmt: skip
    last = container_status(restarted)["lastState"]["terminated"]
    assert last["exitCode"] == 137  # no SIGTERM handler as PID 1: SIGKILL after the grace period
    wait_for(
        lambda: cluster_sim.logs(sim_namespace, "probed", "main").count("started") >= 2, what="a second start"
    )


def test_a_crashing_container_loops_with_back_off(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    apply(cluster_sim, bare_pod("crashy", "raise SystemExit(3)", restart="Always"), namespace=sim_namespace)
    looping = wait_pod(
        cluster_sim, sim_namespace, "crashy",
        lambda p: container_status(p).get("restartCount", 0) >= 2
        and state_of(p)[1].get("reason") == "CrashLoopBackOff",
        what="CrashLoopBackOff after two restarts",
    )  # fmt: skip
    assert container_status(looping)["lastState"]["terminated"]["exitCode"] == 3
    assert phase(looping) == "Running"


GRACEFUL = """
import signal, sys, time
def finish(*_):
    print("SIGTERM: finishing", flush=True); time.sleep(0.5); print("done", flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, finish)
print("serving", flush=True)
while True:
    time.sleep(0.1)
"""
STUBBORN = "import time\nprint('serving', flush=True)\nwhile True: time.sleep(0.1)"


@pytest.mark.parametrize(
    ("script", "exit_code"), [(GRACEFUL, 0), (STUBBORN, 137)], ids=["handles-sigterm", "ignores"]
)
def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    cluster_sim: ClusterSim, sim_namespace: str, script: str, exit_code: int
) -> None:
    apply(
        cluster_sim,
        bare_pod("ending", script, restart="Always", terminationGracePeriodSeconds=2),
        namespace=sim_namespace,
    )
    wait_pod(cluster_sim, sim_namespace, "ending", lambda p: state_of(p)[0] == "running", what="running")
    wait_for(lambda: "serving" in cluster_sim.logs(sim_namespace, "ending", "main"), what="the pod to serve")
    from simkit import kubectl

    kubectl(cluster_sim, "delete", "pod", "ending", "-n", sim_namespace, "--wait=false")
    wait_for(lambda: pod(cluster_sim, sim_namespace, "ending") is None, timeout=60, what="the pod to go")
    ended = [t for t in cluster_sim.terminations if (t.namespace, t.pod) == (sim_namespace, "ending")]
    assert [(t.exit_code, t.stop_requested) for t in ended] == [(exit_code, True)]
    logs = cluster_sim.logs(sim_namespace, "ending", "main")
    assert ("done" in logs) == (exit_code == 0)


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return found


def test_a_pod_deleted_while_it_starts_leaves_no_process_behind(
    cluster_sim: ClusterSim, sim_namespace: str
) -> None:
    """Deleted while waiting for a volume; the volume comes, and the start goes on for a moment.
    A container started after the deletion must be stopped with the pod, never left running on
    its own (a worker nobody sees, consuming its stream: KEDA saw no lag to scale it up for)."""
    token = f"leak-check-{sim_namespace}"
    volume = {"name": "conf", "configMap": {"name": "late"}}
    manifest = bare_pod(
        "starting",
        f"import time  # {token}\nprint('serving', flush=True)\nwhile True: time.sleep(0.1)",
        restart="Always",
        terminationGracePeriodSeconds=2,
        volumes=[volume],
        container={"volumeMounts": [{"name": "conf", "mountPath": "/conf"}]},
    )
    apply(cluster_sim, manifest, namespace=sim_namespace)
    wait_pod(
        cluster_sim, sim_namespace, "starting",
        lambda p: "late" in (state_of(p)[1].get("message") or ""), what="waiting for its volume",
    )  # fmt: skip
    from simkit import kubectl

    kubectl(cluster_sim, "delete", "pod", "starting", "-n", sim_namespace, "--wait=false")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}, "data": {"a": "1"}}
    apply(cluster_sim, config_map, namespace=sim_namespace)
    wait_for(lambda: pod(cluster_sim, sim_namespace, "starting") is None, timeout=60, what="the pod to go")
    time.sleep(8)  # what the start did after the deletion has happened by now
    assert _processes_with(token) == [], cluster_sim.logs(sim_namespace, "starting", "main")


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"volumes": [{"name": "host", "hostPath": {"path": "/etc"}}]}, "CreateContainerError", "hostPath"),
        ({"volumes": [{"name": "x", "nfs": {"server": "n", "path": "/"}}]}, "CreateContainerError", "nfs"),
        ({"hostNetwork": True}, "CreateContainerError", "hostNetwork"),
        ({"container": {"securityContext": {"privileged": True}}}, "CreateContainerError", "privileged"),
        (
            {"container": {"image": "ghcr.io/elsewhere/tool:1.0"}},
            "ImagePullBackOff",
            "ghcr.io/elsewhere/tool",
        ),
    ],
    ids=["hostPath", "nfs", "hostNetwork", "privileged", "unknown-image"],
)
def test_what_the_stand_in_cannot_honour_fails_the_pod_with_a_reason(
    cluster_sim: ClusterSim, sim_namespace: str, change: dict, reason: str, words: str
) -> None:
    apply(cluster_sim, bare_pod("refused", REPORT, **change), namespace=sim_namespace)
    held = wait_pod(
        cluster_sim, sim_namespace, "refused", lambda p: state_of(p)[1].get("reason") == reason, what=reason
    )
    assert words in state_of(held)[1]["message"]
    assert phase(held) == "Pending" and not is_ready(held)
    assert not cluster_sim.logs(sim_namespace, "refused", "main")  # nothing ran


def conditions(pod: dict) -> list[dict]:
    return list((pod.get("status") or {}).get("conditions") or [])  # none before the kubelet's first write


def test_a_pod_that_needs_a_gpu_stays_unscheduled(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    container = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
    apply(cluster_sim, bare_pod("gpu", REPORT, container=container), namespace=sim_namespace)
    held = wait_pod(
        cluster_sim, sim_namespace, "gpu",
        lambda p: any(c["type"] == "PodScheduled" and c["status"] == "False" for c in conditions(p)),
        what="unschedulable",
    )  # fmt: skip
    scheduled = next(c for c in held["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in scheduled["message"]


LISTEN = """
import socket
server = socket.create_server(("0.0.0.0", 9100))
while True:
    conn, _ = server.accept()
    conn.sendall(socket.gethostname().encode())
    conn.close()
"""


def test_every_pod_has_its_own_address_and_ports(cluster_sim: ClusterSim, sim_namespace: str) -> None:
    """Two pods bind 0.0.0.0:9100 (as the images' metrics servers do) without clashing."""
    import socket

    container = {"ports": [{"containerPort": 9100}], "readinessProbe": {"tcpSocket": {"port": 9100},
                                                                          "periodSeconds": 1}}  # fmt: skip
    apply(
        cluster_sim,
        # PID 1 without a SIGTERM handler: the teardown waits the grace period, so keep it short.
        bare_pod("one", LISTEN, restart="Always", container=container, terminationGracePeriodSeconds=1),
        bare_pod("two", LISTEN, restart="Always", container=container, terminationGracePeriodSeconds=1),
        namespace=sim_namespace,
    )
    addresses = {}
    for name in ("one", "two"):
        ready = wait_pod(cluster_sim, sim_namespace, name, is_ready, what="Ready")
        addresses[name] = ready["status"]["podIP"]
        # Its container's process, named for the simulation's metrics-server (HPA cpu).
        pid = int(ready["metadata"]["annotations"][PIDS_ANNOTATION])
        assert "python" in Path(f"/proc/{pid}/cmdline").read_text()
    assert addresses["one"] != addresses["two"]
    for name, address in addresses.items():
        with socket.create_connection((address, 9100), timeout=10) as conn:
            assert conn.recv(100).decode() == name
