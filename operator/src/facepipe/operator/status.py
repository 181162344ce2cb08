"""The FacePipeline status, computed from what the reconcile pass saw (pure)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facepipe.operator.constants import COMPONENTS


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ComponentState:
    desiredReplicas: int
    replicas: int
    readyReplicas: int
    updatedReplicas: int
    rolledOut: bool  # the Deployment controller has seen the latest template
    autoscaler: str  # "", "hpa", "keda"

    @property
    def ready(self) -> bool:
        return self.readyReplicas >= self.desiredReplicas and self.updatedReplicas >= self.desiredReplicas

    def as_status(self) -> dict[str, Any]:
        return {
            "desiredReplicas": self.desiredReplicas,
            "replicas": self.replicas,
            "readyReplicas": self.readyReplicas,
            "updatedReplicas": self.updatedReplicas,
            "ready": self.ready,
            "autoscaler": self.autoscaler,
        }


def component_state(deployment: Mapping[str, Any], autoscaler: str, min_replicas: int) -> ComponentState:
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    desired = int(spec.get("replicas", min_replicas if autoscaler else 1))
    generation = int((deployment.get("metadata") or {}).get("generation", 0))
    return ComponentState(
        desiredReplicas=desired,
        replicas=int(status.get("replicas", 0)),
        readyReplicas=int(status.get("readyReplicas", 0)),
        updatedReplicas=int(status.get("updatedReplicas", 0)),
        rolledOut=int(status.get("observedGeneration", 0)) >= generation,
        autoscaler=autoscaler,
    )


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile pass learnt."""

    generation: int
    spec_error: str | None = None
    conflict_error: str | None = None  # another FacePipeline has its streams (not applied)
    apply_error: str | None = None
    purge_error: str | None = None
    crd_error: str | None = None  # the installed CRD is not the one the operator expects
    changed: bool = False
    components: Mapping[str, ComponentState] | None = None
    streams: Sequence[Mapping[str, Any]] | None = None  # None: not read this pass (keep the previous)
    streams_error: str | None = None
    streams_read: bool = False
    terminating: bool = False
    terminating_message: str | None = None  # what the deletion waits for


def _condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Mapping[str, Any]],
    now: str,
) -> dict[str, Any]:
    value = "True" if status else "False"
    before = previous.get(kind) or {}
    # lastTransitionTime moves only when the status flips.
    since = before.get("lastTransitionTime") if before.get("status") == value else None
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or now,
        "observedGeneration": generation,
    }


def compute_status(obs: Observation, previous: Mapping[str, Any], now: str | None = None) -> dict[str, Any]:
    """The whole status to write; equal input gives equal output (no write on a quiet pass)."""
    now = now or now_iso()
    prev_conditions = {c.get("type"): c for c in previous.get("conditions") or [] if isinstance(c, Mapping)}
    status: dict[str, Any] = {"observedGeneration": obs.generation}

    if obs.streams_read:
        streams = list(obs.streams or [])
        streams_error = obs.streams_error
        status["streamsUpdatedAt"] = now
    else:
        streams = list(previous.get("streams") or [])
        streams_error = previous.get("streamsError")
        if previous.get("streamsUpdatedAt"):
            status["streamsUpdatedAt"] = previous["streamsUpdatedAt"]
    if streams:
        status["streams"] = streams
        ingest = next((s for s in streams if s.get("role") == "ingest"), None)
        if ingest is not None:
            status["ingestLag"] = int(ingest.get("lag", 0)) + int(ingest.get("pending", 0))
    if streams_error:
        status["streamsError"] = streams_error

    components = dict(obs.components or {})
    if components:
        status["components"] = {
            name: components[name].as_status() for name in COMPONENTS if name in components
        }
        ready_count = sum(1 for state in components.values() if state.ready)
        status["readyComponents"] = f"{ready_count}/{len(COMPONENTS)}"
    not_ready = [name for name in COMPONENTS if name in components and not components[name].ready]
    rolling = [name for name in COMPONENTS if name in components and not components[name].rolledOut]

    degraded_reason, degraded_message = "AsExpected", "no problem found"
    not_applied = obs.spec_error or obs.conflict_error
    if obs.spec_error:
        degraded_reason, degraded_message = "InvalidSpec", obs.spec_error
    elif obs.conflict_error:
        degraded_reason, degraded_message = "StreamConflict", obs.conflict_error
    elif obs.apply_error:
        degraded_reason, degraded_message = "ApplyFailed", obs.apply_error
    elif obs.purge_error:
        degraded_reason, degraded_message = "PurgeFailed", obs.purge_error
    elif obs.crd_error:
        degraded_reason, degraded_message = "CRDOutdated", obs.crd_error
    elif streams_error:
        degraded_reason, degraded_message = "RedisUnreachable", streams_error
    degraded = degraded_reason != "AsExpected"

    if not_applied or not components:
        ready, ready_reason, ready_message = (
            False,
            "NotReconciled",
            "the children are not built from this spec",
        )
    elif not_ready:
        ready, ready_reason, ready_message = False, "ComponentsNotReady", "not ready: " + ", ".join(not_ready)
    else:
        ready, ready_reason, ready_message = (
            True,
            "AllComponentsReady",
            "every component has its replicas ready",
        )

    if not_applied:
        progressing, prog_reason = False, degraded_reason
        prog_message = "waiting for a spec that can be applied"
    elif obs.changed:
        progressing, prog_reason, prog_message = True, "ChildrenUpdated", "children created or updated"
    elif rolling or not_ready:
        progressing, prog_reason, prog_message = (
            True,
            "RollingOut",
            "rolling out: " + ", ".join(rolling or not_ready),
        )
    else:
        progressing, prog_reason, prog_message = False, "Complete", "every component is rolled out"

    status["conditions"] = [
        _condition("Ready", ready, ready_reason, ready_message, obs.generation, prev_conditions, now),
        _condition(
            "Progressing", progressing, prog_reason, prog_message, obs.generation, prev_conditions, now
        ),
        _condition(
            "Degraded", degraded, degraded_reason, degraded_message, obs.generation, prev_conditions, now
        ),
    ]
    if obs.terminating:
        status["phase"] = "Terminating"
    elif degraded:
        status["phase"] = "Degraded"
    elif not components:
        status["phase"] = "Pending"
    elif progressing:
        status["phase"] = "Progressing"
    else:
        status["phase"] = "Running"
    status["message"] = degraded_message if degraded else (ready_message if not ready else prog_message)
    if obs.terminating and obs.terminating_message and not degraded:
        status["message"] = obs.terminating_message
    return status


def status_patch(new: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``previous`` status into ``new`` (None removes a field); {} if equal."""
    patch: dict[str, Any] = {key: value for key, value in new.items() if previous.get(key) != value}
    for key in previous:
        if key not in new and key != "kopf":
            patch[key] = None
    return patch
