"""Two tenants installed as the docs say (one tenant chart release each) on one Redis never interfere.

Real parts throughout: `helm install` of the tenant chart (Helm's Go SDK) into the API
emulator, the session's Kopf operator turning both FacePipelines into children, one real
redis-server, a real embedder process started with the environment the operator gave
tenant A's pods, and `facepipe ingest` publishing to a tenant's own stream.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from kubekit import helm_install, resolve_env
from operatorkit import REPO_ROOT, facepipeline, minimal_spec, wait_for

from facepipe.core.tenancy import tenant_stream_name
from facepipe.operator.kube import CONFIG_MAP, DEPLOYMENT, FACE_PIPELINE, KubeApi

pytestmark = pytest.mark.usefixtures("operator_runner")

TENANT_CHART = REPO_ROOT / "charts" / "face-pipeline"


@pytest.fixture
def tenants(kube: KubeApi, kubeconfig: Path, redis_url: str) -> dict[str, str]:
    """tenant -> namespace: acme and globex, each its own tenant chart release on one Redis."""
    suffix = uuid.uuid4().hex[:6]
    installed = {}
    for tenant in ("acme", "globex"):
        namespace = f"{tenant}-{suffix}"
        values = {
            "tenantId": tenant,
            "redis": {"url": redis_url},
            "storage": {"endpoint": "minio.storage:9000"},
            "vectorDb": {"url": "http://qdrant.vectors:6333"},
        }
        release = helm_install(TENANT_CHART, values, kubeconfig, tenant, namespace)
        assert f"face-processing-queue:{{{tenant}}}" in release["notes"]  # NOTES name the stream
        installed[tenant] = namespace
    yield installed
    for tenant, namespace in installed.items():
        kube.delete(FACE_PIPELINE, namespace, tenant)


def config(kube: KubeApi, namespace: str, name: str) -> dict[str, str]:
    found = wait_for(lambda: kube.get(CONFIG_MAP, namespace, f"{name}-config"), what=f"{name}'s ConfigMap")
    return dict(found["data"])


def test_each_tenant_gets_its_own_streams(kube: KubeApi, tenants: dict[str, str]) -> None:
    streams = {tenant: config(kube, ns, tenant)["REDIS_STREAM_NAME"] for tenant, ns in tenants.items()}
    # The chart, the operator and the CLI derive the name in one place.
    assert streams == {tenant: tenant_stream_name(tenant) for tenant in tenants}


def test_a_tenants_pods_consume_only_its_own_messages(
    kube: KubeApi, tenants: dict[str, str], redis_client: redis.Redis, models_dir: Path, tmp_path: Path
) -> None:
    """Tenant A's real embedder, with the env its pods get, leaves tenant B's stream alone."""
    acme, globex = tenants["acme"], tenants["globex"]
    config_maps = {"acme-config": config(kube, acme, "acme")}
    deployment = wait_for(lambda: kube.get(DEPLOYMENT, acme, "acme-embedder"), what="acme's embedder")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = resolve_env(container, config_maps, pod_name="acme-embedder-0")
    env.update(MODELS_DIR=str(models_dir), ORT_INTRA_OP_THREADS="1", READ_BLOCK_MS="200", METRICS_PORT="0")
    # A detected message each tenant's embedder would dead-letter (no faces list): whoever reads it, shows.
    for tenant in tenants:
        redis_client.xadd(f"{tenant_stream_name(tenant)}:detected", {"message": json.dumps({"v": 1})})

    process = subprocess.run(
        [sys.executable, "-m", "facepipe.embedder", "--once"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert process.returncode == 0, process.stderr[-3000:]

    acme_detected = f"{tenant_stream_name('acme')}:detected"
    globex_detected = f"{tenant_stream_name('globex')}:detected"
    assert redis_client.xlen(f"{acme_detected}:dlq") == 1  # acme's own message: read, dead-lettered
    assert redis_client.xinfo_groups(acme_detected)[0]["pending"] == 0
    assert redis_client.xlen(f"{globex_detected}:dlq") == 0  # globex's: never touched
    assert redis_client.xinfo_groups(globex_detected) == []  # not even a consumer group on it
    assert kube.get(CONFIG_MAP, globex, "globex-config") is not None


def test_facepipe_ingest_publishes_to_a_tenants_stream_and_only_its_status_counts_it(
    kube: KubeApi,
    tenants: dict[str, str],
    base_env: dict[str, str],
    faces_dir: Path,
    faces_manifest: Any,
    refused_port: int,
) -> None:
    photo = faces_dir / sorted(faces_manifest)[0]
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "facepipe.cli",
            "ingest",
            str(photo),
            "--tenant",
            "acme",
            "--tenant-stream",
            "--json",
            "--api",
            f"http://127.0.0.1:{refused_port}",
        ],
        env={**os.environ, **base_env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads(cli.stdout)["images"] == 1

    def ingest_length(tenant: str) -> int | None:
        status = (kube.get(FACE_PIPELINE, tenants[tenant], tenant) or {}).get("status") or {}
        ingest = next((s for s in status.get("streams", []) if s["role"] == "ingest"), None)
        return None if ingest is None else int(ingest["length"])

    wait_for(lambda: ingest_length("acme") == 1, what="acme's status to count the message")
    wait_for(lambda: ingest_length("globex") is not None, what="globex's status")
    assert ingest_length("globex") == 0


def test_a_second_pipeline_on_a_used_stream_is_refused(
    kube: KubeApi, tenants: dict[str, str], redis_url: str
) -> None:
    """Explicitly naming another tenant's stream on the same Redis: refused with a clear condition."""
    namespace = f"intruder-{uuid.uuid4().hex[:6]}"
    spec = minimal_spec(redis_url, tenant="initech")
    spec["redis"]["streamName"] = tenant_stream_name("acme")
    kube.create(facepipeline("initech", namespace, spec))
    try:

        def degraded() -> dict[str, Any] | None:
            status = (kube.get(FACE_PIPELINE, namespace, "initech") or {}).get("status") or {}
            found = next((c for c in status.get("conditions", []) if c["type"] == "Degraded"), None)
            return found if found and found["reason"] == "StreamConflict" else None

        condition = wait_for(degraded, what="Degraded StreamConflict")
        assert condition["status"] == "True"
        assert f"already used by FacePipeline {tenants['acme']}/acme (tenant acme)" in condition["message"]
        assert kube.list(DEPLOYMENT, namespace) == []  # nothing runs on someone else's stream
        # The first owner is untouched and keeps going.
        assert config(kube, tenants["acme"], "acme")["REDIS_STREAM_NAME"] == tenant_stream_name("acme")

        # Renamed to a stream of its own: applied.
        kube.patch(FACE_PIPELINE, namespace, "initech", {"spec": {"redis": {"streamName": None}}})
        wait_for(lambda: kube.get(DEPLOYMENT, namespace, "initech-detector"), what="initech's children")
    finally:
        kube.delete(FACE_PIPELINE, namespace, "initech")


def test_another_redis_may_reuse_a_stream_name(
    kube: KubeApi, tenants: dict[str, str], redis_url: str
) -> None:
    namespace = f"other-{uuid.uuid4().hex[:6]}"
    spec = minimal_spec(redis_url.replace("/0", "/5") if redis_url.endswith("/0") else f"{redis_url}/5")
    spec["redis"]["streamName"] = tenant_stream_name("acme")
    kube.create(facepipeline("elsewhere", namespace, spec))
    try:
        wait_for(lambda: kube.get(DEPLOYMENT, namespace, "elsewhere-detector"), what="children on database 5")
    finally:
        kube.delete(FACE_PIPELINE, namespace, "elsewhere")
