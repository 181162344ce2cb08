"""What the operator makes of a model-pack change (facepipe.operator.packs), without a cluster."""

from __future__ import annotations

import kubernetes_validate
import pytest
from kubekit import resolve_env, restricted_violations
from operatorkit import minimal_spec

from facepipe.core.settings import Settings
from facepipe.operator.builders import build_config_map
from facepipe.operator.objects import PipelineRef
from facepipe.operator.packs import (
    PackPlan,
    build_reembed_job,
    deployed_spec,
    job_failure,
    pack_condition,
    pack_status,
    plan_packs,
)
from facepipe.operator.validation import parse_spec
from facepipe.store.pack_migration import MigrationState, Retained

OWNER = PipelineRef("acme", "tenants", "uid-1")
A, B = "buffalo_sc", "opencv_yunet_sface"


def state(active: str = A, target: str = "", phase: str = "", migrated: int = 0, total: int = 0) -> MigrationState:  # noqa: E501
    return MigrationState("acme", active=active, target=target, phase=phase, migrated=migrated, total=total)


@pytest.mark.parametrize(
    ("desired", "record", "deployed", "job"),
    [
        (A, None, A, False),  # a new tenant: nothing indexed, nothing to move
        (A, state(A), A, False),
        (A, state(A, phase="complete"), A, False),
        (B, state(A), A, True),  # the Job fetches and loads B first; the pods wait for it
        (B, state(A, B, "backfilling"), B, True),  # B is loaded: the pods roll, new faces go to B
        (B, state(B, B, "switched"), B, True),  # switched, the last catch-up still to come
        (B, state(B, phase="complete"), B, False),
        (A, state(A, B, "backfilling"), A, True),  # changed back mid-way: a Job for A rolls it back
        (A, state(A, B, "rolling_back"), A, True),
        (B, state(A, B, "rolled_back"), A, True),  # asked for B again after a rollback
    ],
)
def test_plan(desired: str, record: MigrationState | None, deployed: str, job: bool) -> None:
    plan = plan_packs(desired, record)
    assert (plan.deployed, plan.job) == (deployed, job)


def spec(**models: object):  # type: ignore[no-untyped-def]
    raw = minimal_spec("redis://redis:6379/0")
    raw["models"] = {"pack": B, **models}
    return parse_spec("acme", raw)


def test_the_backfill_job_runs_the_reembed_module_in_the_ops_api_image_with_the_pods_env() -> None:
    pipeline = spec(migration={"maxFacesPerSecond": 50, "retainHours": 24})
    plan = plan_packs(B, state(A))
    deployed = deployed_spec(pipeline, plan.deployed)
    job = build_reembed_job(OWNER, deployed, plan)
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    assert len(job["metadata"]["name"]) <= 63  # it becomes the pods' job-name label
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations({"spec": pod}) == []
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/face-pipeline/ops-api:0.1.0"
    assert container["command"] == [
        "python", "-m", "facepipe.ops_api.reembed", "--tenant", "acme", "--pack", B,
        "--retain-hours", "24", "--max-faces-per-s", "50",
    ]
    [init] = pod["initContainers"]
    assert init["command"][-4:] == ["--pack", B, "--dir", "/models"]  # the new pack's files
    config = build_config_map(OWNER, deployed)
    env = resolve_env(container, {config["metadata"]["name"]: config["data"]})
    settings = Settings.model_validate(env)  # the Job reads what the pods read, from the same ConfigMap
    assert (settings.qdrant_url, settings.qdrant_collection) == ("http://qdrant:6333", "faces_v1")
    assert settings.model_pack == A  # the pods' pack until B is loaded; the Job names its own

    again = build_reembed_job(OWNER, deployed, plan)
    assert again == job  # level-based: the same Job on every pass
    faster = deployed_spec(spec(migration={"maxFacesPerSecond": 99}), plan.deployed)
    assert build_reembed_job(OWNER, faster, plan)["metadata"]["name"] != job["metadata"]["name"]
    retried = deployed.model_copy(update={"restartAt": "2026-12-01T10:00:00Z"})
    assert build_reembed_job(OWNER, retried, plan)["metadata"]["name"] != job["metadata"]["name"]


def test_status_and_condition_follow_the_record() -> None:
    waiting = plan_packs(B, state(A))
    assert pack_status(waiting, "acme-pack-1", None) == {
        "pack": A, "desiredPack": B, "deployedPack": A,
        "migration": {"phase": "WaitingForModels", "fromPack": A, "toPack": B, "job": "acme-pack-1"},
    }
    assert pack_condition(waiting, None)[:2] == (False, "WaitingForModels")

    running = plan_packs(B, state(A, B, "backfilling", migrated=40, total=100))
    models = pack_status(running, "acme-pack-1", None)
    assert (models["pack"], models["desiredPack"], models["deployedPack"]) == (A, B, B)
    assert {k: models["migration"][k] for k in ("phase", "fromPack", "toPack", "migrated", "total")} == {
        "phase": "Backfilling", "fromPack": A, "toPack": B, "migrated": 40, "total": 100,
    }
    assert pack_condition(running, None) == (
        False, "Backfilling", f"Backfilling: 40 of 100 faces embedded with pack {B}; searches use {A}"
    )
    done = plan_packs(B, state(B, phase="complete", migrated=100, total=100))
    assert pack_status(done, None, None)["migration"]["phase"] == "Complete"
    assert pack_condition(done, None)[0] is True
    assert pack_status(plan_packs(A, None), None, None) == {"pack": A, "desiredPack": A, "deployedPack": A}


def test_a_failed_job_is_reported_with_its_reason() -> None:
    failed = {
        "status": {
            "failed": 7,
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}
            ],
        }
    }
    assert job_failure(failed) == "BackoffLimitExceeded: too many"
    assert job_failure({"status": {"active": 1}}) is None and job_failure(None) is None
    plan = PackPlan(B, A, A, migrating=True, record=state(A))
    assert pack_status(plan, "acme-pack-1", job_failure(failed))["migration"]["phase"] == "Failed"
    assert pack_condition(plan, job_failure(failed))[:2] == (False, "Failed")


def test_an_expired_collection_kept_for_rollback_brings_the_job_back_once() -> None:
    kept = [Retained(A, "faces_v1_buffalo_sc_v1", "2026-01-01T00:00:00Z")]  # long past
    done = MigrationState("acme", active=B, phase="complete", previous=kept)
    plan = plan_packs(B, done)
    assert (plan.job, plan.migrating, plan.deployed) == (True, False, B)
    assert pack_condition(plan, None)[0] is True  # a cleanup is no migration
    assert pack_status(plan, "acme-pack-1", None)["migration"]["phase"] == "Complete"
    kept = [Retained(A, "faces_v1_buffalo_sc_v1", "2999-01-01T00:00:00Z")]
    assert plan_packs(B, MigrationState("acme", active=B, phase="complete", previous=kept)).job is False
