"""A change of ``spec.models.pack``: the backfill Job, the pack the Deployments run, and the status.

Level-based, from what is observed on each pass: the tenant's migration record in Redis
(facepipe.store.pack_migration: the pack it searches with, the migration in progress and
its progress, written by the indexer and by the backfill) and the backfill Job's status.

- The tenant searches with ``active`` (the record; the spec's pack when nothing is recorded
  yet: a new tenant). When the spec asks for another pack, or a migration is unfinished, a
  backfill Job runs ``python -m facepipe.ops_api.reembed --tenant T --pack <spec's>`` in the
  ops-api image (the one image with the models, S3 and the vector store), with the pods'
  environment; its init container fetches the new pack like the pods' do.
- The Deployments keep running ``active`` until the Job has fetched and loaded the new pack
  (its record says it backfills): a pack the cluster cannot fetch fails the Job and is
  reported, and nothing has been rolled or switched. Then they roll to the new pack, whose
  pods index new images into its collection while the Job backfills.
- The Job switches the tenant's searches when it is complete. Changing the spec back before
  that gives a Job for the old pack, which rolls the migration back (the other Job is
  deleted: its pod stops). A finished Job is deleted once the record shows the result.
- When a collection kept for rollback is past ``models.migration.retainHours``, the same Job
  runs once more for the pack in use: it finds nothing to re-embed and removes the tenant's
  faces from the expired collection.
- The Job's name hashes everything its pod template holds, so a changed Job is a new Job
  (a Job's template cannot be changed); ``spec.restartAt`` retries a failed one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from facepipe.operator.constants import LABEL_COMPONENT
from facepipe.operator.environment import container_env
from facepipe.operator.objects import Manifest, PipelineRef, child_name, common_labels, metadata
from facepipe.operator.pod import (
    CONTAINER_SECURITY_CONTEXT,
    POD_SECURITY_CONTEXT,
    component_image,
    models_init_container,
    models_mount,
    models_volume,
    pod_resources,
    writable_mounts,
    writable_volumes,
)
from facepipe.operator.spec import PipelineSpec
from facepipe.store.pack_migration import (
    BACKFILLING,
    ROLLING_BACK,
    SWITCHED,
    MigrationRecords,
    MigrationState,
)

REEMBED_MODULE = "facepipe.ops_api.reembed"
JOB_COMPONENT = "reembed"
ANNOTATION_PACK = "facepipe.io/pack"
# Each retry resumes where the last one stopped (the record keeps the resume point).
BACKOFF_LIMIT = 6
# Status phases of a migration, from the record's phases and the Job's state.
_PHASES = {BACKFILLING: "Backfilling", SWITCHED: "Switched", ROLLING_BACK: "RollingBack"}


def read_record(url: str, base: str, tenant: str) -> MigrationState | None:
    """The tenant's migration record (raises redis errors: the caller reports them)."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)
    try:
        return MigrationRecords(client, base).load(tenant)
    finally:
        client.close()


@dataclass(frozen=True)
class PackPlan:
    desired: str  # spec.models.pack
    active: str  # the pack the tenant searches with
    deployed: str  # MODEL_PACK the Deployments get
    migrating: bool  # the tenant is not (yet) where the spec wants it
    record: MigrationState | None
    cleanup: bool = False  # a collection kept for rollback has expired

    @property
    def job(self) -> bool:
        """A backfill Job for ``desired`` is wanted."""
        return self.migrating or self.cleanup

    @property
    def waiting_for_models(self) -> bool:
        """The Job runs, but has not loaded the new pack yet (the Deployments wait for it)."""
        return self.migrating and self.deployed != self.desired


def plan_packs(desired: str, record: MigrationState | None) -> PackPlan:
    active = record.active if record is not None and record.active else desired
    running = record is not None and record.running
    loaded = record is not None and record.target == desired and record.phase in (BACKFILLING, SWITCHED)
    deployed = desired if active == desired or loaded else active
    migrating = active != desired or running
    expired = record is not None and any(kept.expired() for kept in record.previous)
    return PackPlan(desired, active, deployed, migrating, record, cleanup=expired and not migrating)


def deployed_spec(spec: PipelineSpec, pack: str) -> PipelineSpec:
    """The spec as the children are built from it: ``pack`` as MODEL_PACK."""
    return spec.model_copy(update={"models": spec.models.model_copy(update={"pack": pack})})


def build_reembed_job(owner: PipelineRef, spec: PipelineSpec, plan: PackPlan) -> Manifest:
    """The backfill Job of ``plan.desired`` (``spec`` is the deployed one: its ConfigMap is the env)."""
    target = deployed_spec(spec, plan.desired)
    migration = spec.models.migration
    args = [
        "--tenant", spec.tenantId, "--pack", plan.desired,
        "--retain-hours", str(migration.retainHours), "--max-faces-per-s", str(migration.maxFacesPerSecond),
    ]
    labels = {**common_labels(owner, spec), LABEL_COMPONENT: JOB_COMPONENT}
    container: dict[str, Any] = {
        "name": JOB_COMPONENT,
        "image": component_image(spec, "ops-api"),
        "imagePullPolicy": spec.image.pullPolicy,
        "command": ["python", "-m", REEMBED_MODULE, *args],
        "env": container_env(owner, spec, "ops-api"),
        "securityContext": dict(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": [*writable_mounts(), models_mount(target, read_only=True)],
    }
    resources = pod_resources(spec, "ops-api", spec.components.opsApi.resources)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a failed try is a new pod: the Job counts it and retries
        "securityContext": dict(POD_SECURITY_CONTEXT),
        "initContainers": [models_init_container(target, "ops-api")],
        "containers": [container],
        "volumes": [*writable_volumes(), models_volume(target)],
    }
    if spec.image.pullSecrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in spec.image.pullSecrets]
    template = {"metadata": {"labels": labels}, "spec": pod_spec}
    digest = json.dumps([template, spec.restartAt], sort_keys=True).encode()
    name = child_name(owner, f"pack-{hashlib.sha256(digest).hexdigest()[:6]}")
    job_metadata = metadata(owner, name, labels)
    job_metadata["annotations"] = {ANNOTATION_PACK: plan.desired}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": job_metadata,
        "spec": {"backoffLimit": BACKOFF_LIMIT, "template": template},
    }


def job_failure(job: dict[str, Any] | None) -> str | None:
    """Why the Job has failed for good (its Failed condition), None while it has not."""
    status = (job or {}).get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            reason = condition.get("reason") or "Failed"
            return f"{reason}: {condition.get('message') or 'the backfill pods failed'}"
    return None


def pack_status(plan: PackPlan, job_name: str | None, failure: str | None) -> dict[str, Any]:
    """``status.models``: the pack searched, the pack asked for, and the migration's progress."""
    out: dict[str, Any] = {"pack": plan.active, "desiredPack": plan.desired, "deployedPack": plan.deployed}
    record = plan.record if plan.record is not None else MigrationState("")
    if not (plan.migrating or record.target or record.phase):
        return out  # no migration, now or before
    migration: dict[str, Any] = {
        "phase": migration_phase(plan, failure),
        "toPack": record.target or plan.desired,
    }
    if plan.migrating:
        migration["fromPack"] = plan.active
    if record.phase:  # the backfill has reported
        migration.update(migrated=record.migrated, total=record.total, skipped=record.skipped)
        migration["facesPerSecond"] = record.faces_per_s
    if job_name:
        migration["job"] = job_name
    for key, value in (("startedAt", record.started_at), ("finishedAt", record.finished_at)):
        if value:
            migration[key] = value
    message = failure or record.error
    if message:
        migration["message"] = message
    out["migration"] = migration
    return out


def migration_phase(plan: PackPlan, failure: str | None) -> str:
    if failure:
        return "Failed"
    if plan.waiting_for_models:
        return "WaitingForModels"
    record = plan.record
    if record is not None and record.running:
        return _PHASES[record.phase]
    if plan.migrating:
        return "Pending"  # the Job was created; its pod has not reported yet
    return "RolledBack" if record is not None and record.phase == "rolled_back" else "Complete"


def pack_condition(plan: PackPlan, failure: str | None) -> tuple[bool, str, str]:
    """The PackMigrated condition: (status, reason, message)."""
    if failure:
        message = f"the backfill to {plan.desired} failed ({failure}); searches stay on {plan.active}"
        return False, "Failed", message
    if not plan.migrating:
        return True, "Complete", f"searches use pack {plan.active}, the one the spec asks for"
    phase = migration_phase(plan, None)
    record = plan.record
    done = f"{record.migrated} of {record.total} faces" if record is not None and record.running else "faces"
    return False, phase, f"{phase}: {done} embedded with pack {plan.desired}; searches use {plan.active}"
