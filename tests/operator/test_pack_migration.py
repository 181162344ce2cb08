"""A change of spec.models.pack through the real operator (Kopf) against the emulated API server.

The emulator runs no controllers, so the test is the kubelet for the backfill Jobs the
operator creates: it runs each Job's container as a process, with the environment the pod
would get (its ConfigMap references resolved) and MODELS_DIR where the init container would
have put the files, and stops it when the operator deletes the Job. Everything the Job
touches is real: Redis, SeaweedFS, a Qdrant server (the REST stand-in), the models, faces
indexed by the real stages from ../shared/data/faces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubekit import resolve_env
from operatorkit import facepipeline, minimal_spec, wait_for
from packkit import index_photos, qdrant_server

from facepipe.core.settings import Settings
from facepipe.operator.kube import CONFIG_MAP, FACE_PIPELINE, JOB, KubeApi
from facepipe.operator.packs import ANNOTATION_PACK
from facepipe.store.pack_migration import MigrationRecords
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex

pytestmark = [pytest.mark.usefixtures("operator_runner"), pytest.mark.slow]
BUFFALO, SFACE = "buffalo_sc", "opencv_yunet_sface"


def status(kube: KubeApi, namespace: str) -> dict[str, Any]:
    return (kube.get(FACE_PIPELINE, namespace, "acme") or {}).get("status") or {}


def models_status(kube: KubeApi, namespace: str) -> dict[str, Any]:
    return status(kube, namespace).get("models") or {}


def phase(kube: KubeApi, namespace: str) -> str | None:
    return models_status(kube, namespace).get("migration", {}).get("phase")


def condition(kube: KubeApi, namespace: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(kube, namespace).get("conditions", []) if c["type"] == kind), {})


def deployed_pack(kube: KubeApi, namespace: str) -> str:
    return (kube.get(CONFIG_MAP, namespace, "acme-config") or {})["data"]["MODEL_PACK"]


def jobs(kube: KubeApi, namespace: str) -> list[dict[str, Any]]:
    return kube.list(JOB, namespace)


def the_job_for(kube: KubeApi, namespace: str, pack: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        current = jobs(kube, namespace)
        one = len(current) == 1 and current[0]["metadata"]["annotations"][ANNOTATION_PACK] == pack
        return current[0] if one else None

    return wait_for(found, timeout=60, what=f"one backfill Job, for {pack}")


class Kubelet:
    """Runs a Job's container as a process, as a kubelet would run its pod."""

    def __init__(self, kube: KubeApi, namespace: str, models_dir: Path) -> None:
        self.kube, self.namespace, self.models_dir = kube, namespace, models_dir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, job: dict[str, Any]) -> subprocess.Popen[bytes]:
        [container] = job["spec"]["template"]["spec"]["containers"]
        config = self.kube.get(CONFIG_MAP, self.namespace, "acme-config")
        assert config is not None
        env = resolve_env(container, {"acme-config": config["data"]})
        # What the pod's init container and volume provide, and this machine's Python.
        env.update(MODELS_DIR=str(self.models_dir), ORT_INTRA_OP_THREADS="1", PATH=os.environ["PATH"])
        command = [sys.executable if part == "python" else part for part in container["command"]]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.running.append(proc)
        return proc

    def run(self, job: dict[str, Any]) -> str:
        proc = self.start(job)
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output.decode()[-4000:]
        return output.decode()

    def stop_when_deleted(self, job: dict[str, Any], proc: subprocess.Popen[bytes]) -> None:
        """The operator deleted the Job: its pod gets SIGTERM."""
        name = job["metadata"]["name"]
        wait_for(lambda: self.kube.get(JOB, self.namespace, name) is None, timeout=60, what=f"{name} deleted")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    def close(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def kubelet(kube: KubeApi, namespace: str, models_dir: Path) -> Iterator[Kubelet]:
    runner = Kubelet(kube, namespace, models_dir)
    yield runner
    runner.close()


@pytest.fixture
def stores(tmp_path: Path, base_env: dict[str, str], models_dir: Path) -> Iterator[Settings]:
    """The tenant's settings: the session's Redis and SeaweedFS, a Qdrant server of its own."""
    with qdrant_server(tmp_path / "qdrant") as url:
        env = {**base_env, "QDRANT_URL": url, "MODELS_DIR": str(models_dir), "MAX_POSE_RATIO": "100"}
        yield Settings.model_validate(env)


def spec_of(settings: Settings, pack: str) -> dict[str, Any]:
    spec = minimal_spec(settings.redis_url)
    spec["storage"] = {
        "endpoint": settings.minio_endpoint,
        "buckets": {
            "raw": settings.bucket_raw,
            "crops": settings.bucket_crops,
            "thumbs": settings.bucket_thumbs,
            "metadata": settings.bucket_metadata,
        },
    }
    spec["vectorDb"] = {"url": settings.qdrant_url}
    spec["models"] = {"pack": pack, "migration": {"maxFacesPerSecond": 2}}
    return spec


def test_a_pack_change_runs_the_backfill_reports_progress_switches_and_a_change_back_rolls_back(
    kube: KubeApi,
    namespace: str,
    stores: Settings,
    kubelet: Kubelet,
    buffalo_sc: Any,
    faces_dir: Path,
    redis_client: redis.Redis,
) -> None:
    store = ObjectStore(stores)
    store.ensure_buckets()
    index = VectorIndex(stores)
    photos = sorted(p for p in faces_dir.iterdir() if p.suffix in {".jpg", ".png"})
    index_photos(stores, buffalo_sc, photos, "acme", client=redis_client, store=store, index=index)
    faces = index.count("acme")
    assert faces == 11

    kube.create(facepipeline("acme", namespace, spec_of(stores, BUFFALO)))
    wait_for(lambda: models_status(kube, namespace).get("pack") == BUFFALO, what="status.models")
    assert jobs(kube, namespace) == [] and condition(kube, namespace, "PackMigrated")["status"] == "True"

    # 1. spec.models.pack changes: a Job fetches the new pack first; the pods keep the old one meanwhile.
    kube.patch(FACE_PIPELINE, namespace, "acme", {"spec": {"models": {"pack": SFACE}}})
    job = the_job_for(kube, namespace, SFACE)
    wait_for(lambda: phase(kube, namespace) == "WaitingForModels", what="the Job waiting for its models")
    assert deployed_pack(kube, namespace) == BUFFALO
    proc = kubelet.start(job)

    def progress() -> dict[str, Any] | None:
        migration = models_status(kube, namespace).get("migration", {})
        return migration if migration.get("phase") == "Backfilling" and migration.get("migrated") else None

    reported = wait_for(progress, timeout=120, what="backfill progress in the status")
    assert reported["total"] == faces and 0 < reported["migrated"] < faces
    assert reported["job"] == job["metadata"]["name"]
    assert condition(kube, namespace, "PackMigrated")["reason"] == "Backfilling"
    wait_for(lambda: deployed_pack(kube, namespace) == SFACE, what="the pods rolled to the loaded pack")
    assert models_status(kube, namespace)["pack"] == BUFFALO  # searches stay on the old pack meanwhile

    # 2. Changed back mid-way: the Job is replaced by one for the old pack, which rolls back.
    kube.patch(FACE_PIPELINE, namespace, "acme", {"spec": {"models": {"pack": BUFFALO}}})
    kubelet.stop_when_deleted(job, proc)
    back = the_job_for(kube, namespace, BUFFALO)
    assert deployed_pack(kube, namespace) == BUFFALO
    assert "rolled back pack buffalo_sc" in kubelet.run(back)
    wait_for(lambda: phase(kube, namespace) == "RolledBack", what="the rollback in the status")
    wait_for(lambda: jobs(kube, namespace) == [], what="the finished Job deleted")
    assert condition(kube, namespace, "PackMigrated")["status"] == "True"
    assert index.route("acme").pack.name == BUFFALO and index.count("acme") == faces  # type: ignore[union-attr]
    assert index.view(f"faces_v1_{SFACE}_v1").vector_size() is None  # the abandoned collection is gone

    # 3. Asked again, run to the end: the searches switch to the new pack.
    kube.patch(FACE_PIPELINE, namespace, "acme", {"spec": {"models": {"pack": SFACE}}})
    assert "migrated pack opencv_yunet_sface" in kubelet.run(the_job_for(kube, namespace, SFACE))
    wait_for(lambda: phase(kube, namespace) == "Complete", what="the switch in the status")
    done = models_status(kube, namespace)
    assert done["pack"] == SFACE
    assert (done["migration"]["migrated"], done["migration"]["total"]) == (faces, faces)
    wait_for(lambda: jobs(kube, namespace) == [], what="the finished Job deleted")
    assert deployed_pack(kube, namespace) == SFACE
    assert condition(kube, namespace, "PackMigrated")["status"] == "True"
    assert index.route("acme").pack.name == SFACE and index.count("acme") == faces  # type: ignore[union-attr]
    index.close()


def test_a_pack_the_cluster_cannot_fetch_is_reported_before_anything_switches(
    kube: KubeApi, namespace: str, redis_client: redis.Redis, redis_url: str
) -> None:
    MigrationRecords(redis_client, "faces_v1").note_active("acme", BUFFALO)  # as the indexer records it
    spec = minimal_spec(redis_url)
    kube.create(facepipeline("acme", namespace, spec))
    wait_for(lambda: models_status(kube, namespace).get("pack") == BUFFALO, what="status.models")
    kube.patch(FACE_PIPELINE, namespace, "acme", {"spec": {"models": {"pack": SFACE}}})
    job = the_job_for(kube, namespace, SFACE)
    # What the Job controller writes when the pods' init container cannot fetch the pack.
    failed = {
        "failed": 7,
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            }
        ],
    }
    kube.patch(JOB, namespace, job["metadata"]["name"], {"status": failed}, subresource="status")
    degraded = wait_for(
        lambda: condition(kube, namespace, "Degraded").get("reason") == "PackMigrationFailed"
        and condition(kube, namespace, "Degraded"),
        what="the failure in the status",
    )
    assert "BackoffLimitExceeded" in degraded["message"] and job["metadata"]["name"] in degraded["message"]
    assert condition(kube, namespace, "PackMigrated")["reason"] == "Failed"
    models = models_status(kube, namespace)
    assert (models["pack"], models["deployedPack"], phase(kube, namespace)) == (BUFFALO, BUFFALO, "Failed")
    assert deployed_pack(kube, namespace) == BUFFALO  # nothing rolled, nothing switched
