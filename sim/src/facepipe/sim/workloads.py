"""Deployments and ReplicaSets, as kube-controller-manager runs them (the parts the product uses).

A Deployment owns one ReplicaSet per pod template (named ``<deployment>-<pod-template-hash>``,
the hash also a label of the set and its pods); a ReplicaSet keeps ``spec.replicas`` pods.
A template change is rolled out with the RollingUpdate arithmetic of the real controller
(maxSurge rounded up, maxUnavailable rounded down, both 25 % by default; old sets scaled
down only as far as availability allows), or Recreate. Status: replicas, updatedReplicas,
readyReplicas, availableReplicas, unavailableReplicas, observedGeneration, conditions.
An autoscaler changes ``spec.replicas`` of the Deployment and this follows.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from facepipe.sim.apiclient import DEPLOYMENT, POD, REPLICA_SET, Api, Informer, Key, WorkQueue, key_of

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
EXPECTATION_TIMEOUT = 30.0  # seconds an unseen create/delete is trusted before listing wins


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions); an empty selector matches everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression["key"], expression["operator"], expression.get("values") or []
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    return any(
        ref.get("uid") == uid and ref.get("controller")
        for ref in obj["metadata"].get("ownerReferences") or []
    )


def controller_ref(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod_ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_active(pod: Mapping[str, Any]) -> bool:
    """Counted by its ReplicaSet: not terminating, not finished."""
    phase = (pod.get("status") or {}).get("phase")
    return not pod["metadata"].get("deletionTimestamp") and phase not in ("Succeeded", "Failed")


def resolve_fraction(value: int | str | None, total: int, default: str, *, round_up: bool) -> int:
    """maxSurge / maxUnavailable: an integer, or a percentage of the desired replicas."""
    value = default if value is None else value
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.endswith("%"):
        return int(text)
    share = total * int(text[:-1]) / 100
    return math.ceil(share) if round_up else math.floor(share)


class Expectations:
    """Creations and deletions made but not yet seen by the informer (client-go's expectations)."""

    def __init__(self) -> None:
        self._created: dict[str, dict[str, float]] = {}
        self._deleted: dict[str, dict[str, float]] = {}

    def created(self, owner: str, name: str) -> None:
        self._created.setdefault(owner, {})[name] = time.monotonic()

    def deleted(self, owner: str, name: str) -> None:
        self._deleted.setdefault(owner, {})[name] = time.monotonic()

    def pending(self, owner: str, seen: set[str]) -> tuple[set[str], set[str]]:
        """(created, not yet seen), (deleted, still seen as active), forgetting what has aged out."""
        fresh = time.monotonic() - EXPECTATION_TIMEOUT
        created = self._created.get(owner, {})
        deleted = self._deleted.get(owner, {})
        for name in [n for n, t in created.items() if n in seen or t < fresh]:
            del created[name]
        for name in [n for n, t in deleted.items() if n not in seen or t < fresh]:
            del deleted[name]
        return set(created), set(deleted)


class ReplicaSetController:
    def __init__(self, api: Api, replica_sets: Informer, pods: Informer) -> None:
        self.api = api
        self.replica_sets = replica_sets
        self.pods = pods
        self.queue = WorkQueue("replicaset", self.reconcile, workers=2)
        self.expectations = Expectations()
        replica_sets.listeners.append(lambda _event, rs: self.queue.add(key_of(rs)))
        pods.listeners.append(self._pod_changed)

    def _pod_changed(self, _event: str, pod: dict[str, Any]) -> None:
        for ref in pod["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "ReplicaSet" and ref.get("controller"):
                self.queue.add((pod["metadata"]["namespace"], ref["name"]))

    async def reconcile(self, key: Key) -> None:
        rs = self.replica_sets.get(*key)
        if rs is None or rs["metadata"].get("deletionTimestamp"):
            return
        uid = rs["metadata"]["uid"]
        namespace = key[0]
        pods = [p for p in self.pods.items(namespace) if owned_by(p, uid)]
        active = [p for p in pods if pod_active(p)]
        unseen, deleting = self.expectations.pending(uid, {p["metadata"]["name"] for p in active})
        active = [p for p in active if p["metadata"]["name"] not in deleting]
        count = len(active) + len(unseen)
        desired = int(rs["spec"].get("replicas", 1))
        if count < desired:
            for _ in range(min(desired - count, 10)):
                created = await self.api.create(POD, self._new_pod(rs))
                self.expectations.created(uid, created["metadata"]["name"])
        elif count > desired:
            for pod in sorted(active, key=_deletion_rank)[: count - desired]:
                self.expectations.deleted(uid, pod["metadata"]["name"])
                await self.api.delete(POD, namespace, pod["metadata"]["name"])
        if unseen or deleting:
            self.queue.add_later(key, 1.0)
        ready = sum(1 for p in active if pod_ready(p))
        status = {
            "replicas": len(active),
            "fullyLabeledReplicas": len(active),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        if any(rs.get("status", {}).get(k) != v for k, v in status.items()):
            await self.api.patch(REPLICA_SET, namespace, key[1], {"status": status}, subresource="status")

    @staticmethod
    def _new_pod(rs: Mapping[str, Any]) -> dict[str, Any]:
        template = rs["spec"]["template"]
        meta = template.get("metadata") or {}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": rs["metadata"]["name"] + "-",
                "namespace": rs["metadata"]["namespace"],
                "labels": dict(meta.get("labels") or {}),
                "annotations": dict(meta.get("annotations") or {}),
                "ownerReferences": [controller_ref(rs)],
            },
            "spec": json.loads(json.dumps(template.get("spec") or {})),
        }


def _deletion_rank(pod: Mapping[str, Any]) -> tuple[int, int, str]:
    """Which pods go first on scale-down: not running, then not ready, then the newest."""
    running = (pod.get("status") or {}).get("phase") == "Running"
    created = pod["metadata"].get("creationTimestamp", "")
    inverted = "".join(chr(0x10FFFF - ord(c)) for c in created)  # newest first
    return (int(running), int(pod_ready(pod)), inverted)


class DeploymentController:
    def __init__(self, api: Api, deployments: Informer, replica_sets: Informer) -> None:
        self.api = api
        self.deployments = deployments
        self.replica_sets = replica_sets
        self.queue = WorkQueue("deployment", self.reconcile, workers=2)
        deployments.listeners.append(lambda _event, d: self.queue.add(key_of(d)))
        replica_sets.listeners.append(self._rs_changed)

    def _rs_changed(self, _event: str, rs: dict[str, Any]) -> None:
        for ref in rs["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Deployment" and ref.get("controller"):
                self.queue.add((rs["metadata"]["namespace"], ref["name"]))

    async def reconcile(self, key: Key) -> None:
        deployment = self.deployments.get(*key)
        if deployment is None or deployment["metadata"].get("deletionTimestamp"):
            return
        spec = deployment["spec"]
        desired = int(spec.get("replicas", 1))
        uid = deployment["metadata"]["uid"]
        sets = [rs for rs in self.replica_sets.items(key[0]) if owned_by(rs, uid)]
        digest = template_hash(spec["template"])
        new = next((rs for rs in sets if rs["metadata"].get("labels", {}).get(HASH_LABEL) == digest), None)
        olds = sorted(
            (rs for rs in sets if rs is not new), key=lambda rs: rs["metadata"]["creationTimestamp"]
        )
        if new is None:
            new = await self.api.create(REPLICA_SET, self._new_replica_set(deployment, digest, olds))
            sets.append(new)
        strategy = spec.get("strategy") or {}
        if strategy.get("type") == "Recreate":
            await self._recreate(new, olds, desired)
        else:
            rolling = strategy.get("rollingUpdate") or {}
            surge = resolve_fraction(rolling.get("maxSurge"), desired, "25%", round_up=True)
            unavailable = resolve_fraction(rolling.get("maxUnavailable"), desired, "25%", round_up=False)
            if surge == 0 and unavailable == 0:
                unavailable = 1
            await self._roll(new, olds, desired, surge, unavailable)
        await self._prune_history(olds, int(spec.get("revisionHistoryLimit", 10)))
        await self._write_status(deployment, new, olds, desired)

    def _new_replica_set(
        self, deployment: Mapping[str, Any], digest: str, olds: list[dict[str, Any]]
    ) -> dict[str, Any]:
        spec = deployment["spec"]
        template = json.loads(json.dumps(spec["template"]))
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = digest
        selector = json.loads(json.dumps(spec.get("selector") or {}))
        selector.setdefault("matchLabels", {})[HASH_LABEL] = digest
        revision = 1 + max(
            (int(rs["metadata"].get("annotations", {}).get(REVISION, 0)) for rs in olds), default=0
        )
        return {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{deployment['metadata']['name']}-{digest}",
                "namespace": deployment["metadata"]["namespace"],
                "labels": dict(template["metadata"]["labels"]),
                "annotations": {REVISION: str(revision)},
                "ownerReferences": [controller_ref(deployment)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }

    async def _scale(self, rs: dict[str, Any], replicas: int) -> None:
        if int(rs["spec"].get("replicas", 0)) != replicas:
            meta = rs["metadata"]
            updated = await self.api.patch(
                REPLICA_SET, meta["namespace"], meta["name"], {"spec": {"replicas": replicas}}
            )
            rs["spec"] = updated["spec"]

    async def _recreate(self, new: dict[str, Any], olds: list[dict[str, Any]], desired: int) -> None:
        for rs in olds:
            await self._scale(rs, 0)
        if any(int((rs.get("status") or {}).get("replicas", 0)) for rs in olds):
            return  # the old pods must be gone first (the pods informer brings us back)
        await self._scale(new, desired)

    async def _roll(
        self, new: dict[str, Any], olds: list[dict[str, Any]], desired: int, surge: int, unavailable: int
    ) -> None:
        def replicas(rs: Mapping[str, Any]) -> int:
            return int(rs["spec"].get("replicas", 0))

        def available(rs: Mapping[str, Any]) -> int:
            return int((rs.get("status") or {}).get("availableReplicas", 0))

        if not any(replicas(rs) for rs in olds):
            await self._scale(new, desired)
            return
        # Scale the new set up, within desired + maxSurge pods in all.
        total = replicas(new) + sum(replicas(rs) for rs in olds)
        if replicas(new) < desired:
            await self._scale(new, min(desired, replicas(new) + max(0, desired + surge - total)))
        elif replicas(new) > desired:
            await self._scale(new, desired)
        # Scale old sets down, keeping desired - maxUnavailable pods available.
        minimum = desired - unavailable
        total = replicas(new) + sum(replicas(rs) for rs in olds)
        budget = total - minimum - (replicas(new) - available(new))
        for rs in olds:  # first the old pods that are not available anyway
            if budget <= 0:
                return
            cut = min(budget, max(0, replicas(rs) - available(rs)))
            if cut:
                await self._scale(rs, replicas(rs) - cut)
                budget -= cut
        spare = available(new) + sum(min(available(rs), replicas(rs)) for rs in olds) - minimum
        for rs in olds:  # oldest first
            if spare <= 0:
                return
            cut = min(spare, replicas(rs))
            if cut:
                await self._scale(rs, replicas(rs) - cut)
                spare -= cut

    async def _prune_history(self, olds: list[dict[str, Any]], limit: int) -> None:
        idle = [
            rs
            for rs in olds
            if not rs["spec"].get("replicas") and not (rs.get("status") or {}).get("replicas")
        ]
        for rs in idle[: max(0, len(idle) - limit)]:
            await self.api.delete(REPLICA_SET, rs["metadata"]["namespace"], rs["metadata"]["name"])

    async def _write_status(
        self, deployment: dict[str, Any], new: dict[str, Any], olds: list[dict[str, Any]], desired: int
    ) -> None:
        every = [new, *olds]

        def total(field: str) -> int:
            return sum(int((rs.get("status") or {}).get(field, 0)) for rs in every)

        available = total("availableReplicas")
        updated = int((new.get("status") or {}).get("replicas", 0))
        rolled_out = (
            updated == desired
            and not any(int((rs.get("status") or {}).get("replicas", 0)) for rs in olds)
            and int((new.get("status") or {}).get("availableReplicas", 0)) >= desired
        )
        old_status = deployment.get("status") or {}
        status: dict[str, Any] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": total("replicas"),
            "updatedReplicas": updated,
            "readyReplicas": total("readyReplicas"),
            "availableReplicas": available,
            "unavailableReplicas": max(0, desired - available),
        }
        conditions = [
            (
                "Available",
                available >= desired - _max_unavailable(deployment, desired),
                "MinimumReplicasAvailable",
            ),
            ("Progressing", True, "NewReplicaSetAvailable" if rolled_out else "ReplicaSetUpdated"),
        ]
        previous = {c["type"]: c for c in old_status.get("conditions") or []}
        status["conditions"] = [
            _condition(previous.get(kind), kind, ok, reason, f"ReplicaSet {new['metadata']['name']}")
            for kind, ok, reason in conditions
        ]
        if any(old_status.get(k) != v for k, v in status.items()):
            meta = deployment["metadata"]
            await self.api.patch(
                DEPLOYMENT, meta["namespace"], meta["name"], {"status": status}, subresource="status"
            )


def _max_unavailable(deployment: Mapping[str, Any], desired: int) -> int:
    strategy = deployment["spec"].get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return desired
    rolling = strategy.get("rollingUpdate") or {}
    return resolve_fraction(rolling.get("maxUnavailable"), desired, "25%", round_up=False)


def _condition(
    previous: Mapping[str, Any] | None, kind: str, ok: bool, reason: str, about: str
) -> dict[str, Any]:
    status = "True" if ok else "False"
    changed = previous is None or previous.get("status") != status or previous.get("reason") != reason
    stamp = now() if changed else previous.get("lastTransitionTime", now())  # type: ignore[union-attr]
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": f"{about}: {reason}",
        "lastTransitionTime": stamp,
        "lastUpdateTime": stamp,
    }
