"""KMock's KubernetesEmulator with what Kopf and kubectl need from a real API server.

Plain ``kmock.KubernetesEmulator`` is an in-memory dict over HTTP. This subclass adds
(Kopf needs the first three):

1. object identity and versions: ``metadata.uid``, ``creationTimestamp``,
   ``generation`` (bumped when anything outside metadata/status changes) and a
   cluster-wide ``resourceVersion`` (bumped on every real change, untouched by a
   no-op patch, so an idempotent controller produces no events);
2. watches that resume from a ``resourceVersion`` instead of replaying every
   object (replayed from a bounded event log), with label/field selectors;
3. lists with ``kind: <Kind>List``, ``apiVersion`` and a ``resourceVersion``;
4. status subresources (``/status`` writes only status; the main endpoint ignores it),
   PUT, optimistic concurrency on ``metadata.resourceVersion``, JSON-patch errors as 422,
   strategic merge patches (facepipe.sim.strategic: what ``kubectl apply`` sends), but no
   server-side apply (an apply patch is answered 415),
   graceful deletion of pods bound to a node (left to the kubelet to finish),
   ``generateName``, and deletion with finalizers plus garbage collection of dependents
   by owner uid (what kube-controller-manager would do);
5. ``kubectl get`` tables: the CRD's printer columns and a few built-in columns.

It still has no controllers (no ReplicaSets, Pods, HPA behaviour) and no admission or
schema checks: tests assert what the operator writes, not what a cluster would do next.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import secrets
import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, rendering

from facepipe.sim.emulator.errors import conflict, invalid, not_found, unsupported_media_type
from facepipe.sim.emulator.kinds import EmulatorKinds, now_timestamp
from facepipe.sim.emulator.reads import EmulatorReads
from facepipe.sim.strategic import strategic_merge

Resource = kmock.resource
_EVENT_LOG_SIZE = 20_000
# --- the emulator ------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class FacePipeEmulator(EmulatorKinds, EmulatorReads, kmock.KubernetesEmulator):
    """The emulator; call :meth:`register_defaults` (:mod:`.kinds`) before serving."""

    _revision: int = attrs.field(default=0, init=False)
    _event_log: dict[Resource, collections.deque[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=_EVENT_LOG_SIZE)), init=False
    )
    _printer_columns: dict[Resource, list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _gc_tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    # -- helpers --

    def _info(self, res: Resource) -> kmock.ResourceInfo | None:
        # Not .get(): ResourcesArray creates an entry on a missing key.
        return self.resources[res] if res in self.resources else None  # noqa: SIM401

    def _kind(self, res: Resource) -> str:
        info = self._info(res)
        return info.kind if info and info.kind else res.plural.capitalize()

    def _api_version(self, res: Resource) -> str:
        return f"{res.group}/{res.version}" if res.group else res.version

    def _has_status(self, res: Resource) -> bool:
        info = self._info(res)
        return bool(info and "status" in info.subresources)

    def _live(self, key: tuple[Resource, str | None, str]) -> dict[str, Any] | None:
        if key not in self.objects:
            return None
        obj = self.objects[key]
        return None if obj.deleted else obj.raw

    async def _emit(self, res: Resource, kind: str, body: Mapping[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(dict(body))}
        self._event_log[res].append((int(body["metadata"]["resourceVersion"]), event))
        await self._buses[res].put(event)

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    # -- writes --

    @staticmethod
    def _is_namespaced_info(info: kmock.ResourceInfo | None) -> bool:
        return info is None or info.namespaced is not False

    async def _create(self, request: rendering.Request) -> None:
        res = request.resource
        assert res is not None
        if not isinstance(request.data, dict):
            raise invalid("the body must be a JSON object")
        body = request.data  # mutated in place: the fallback answers with the stored object by name
        meta = body.setdefault("metadata", {})
        namespaced = self._is_namespaced_info(self._info(res))
        namespace = (request.namespace or meta.get("namespace")) if namespaced else None
        if namespaced:
            if not namespace:
                raise invalid("metadata.namespace is required")
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid("metadata.name or metadata.generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key = (res, namespace, meta["name"])
        if self._live(key) is not None:
            raise kmock.KubernetesError(
                status=409,
                reason="AlreadyExists",
                message=f'{res.plural} "{meta["name"]}" already exists',
                details={},
            )
        if self._has_status(res):
            body.pop("status", None)
        body.setdefault("apiVersion", self._api_version(res))
        body.setdefault("kind", self._kind(res))
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=now_timestamp(),
            generation=1,
            resourceVersion=self._next_revision(),
        )
        meta.pop("deletionTimestamp", None)
        if key in self.objects:
            self.objects[key].create(copy.deepcopy(body))
        else:
            self.objects[key] = copy.deepcopy(body)
        await self._emit(res, "ADDED", body)
        owners = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
        if owners and not any(self._uid_is_live(uid) for uid in owners):
            # The garbage collector removes dependents whose owners are gone (e.g. created by a
            # controller pass that raced the owner's deletion) -- after the creator got its answer.
            asyncio.get_running_loop().call_later(0.05, self._collect_orphan, res, key)

    def _uid_is_live(self, uid: str | None) -> bool:
        return any(
            not obj.deleted and obj.raw.get("metadata", {}).get("uid") == uid for obj in self.objects.values()
        )

    def _collect_orphan(self, res: Resource, key: tuple[Resource, str | None, str]) -> None:
        async def collect() -> None:
            async with self._lock:
                await self._delete_key(res, key, orphan=False)

        self._gc_tasks.add(task := asyncio.get_running_loop().create_task(collect()))
        task.add_done_callback(self._gc_tasks.discard)

    async def _update(self, request: rendering.Request, *, replace: bool) -> dict[str, Any]:
        res = request.resource
        assert res is not None and request.name is not None
        key = (res, request.namespace, request.name)
        if "apply-patch" in request.headers.get("Content-Type", ""):
            # Server-side apply (field ownership, removal of fields a manager stops applying) is
            # not emulated: refused as by an API server without it, never taken for a merge patch.
            raise unsupported_media_type(
                "server-side apply is not emulated: use a real kube-apiserver, or merge patches "
                "(the operator: FACEPIPE_OPERATOR_APPLY=merge)"
            )
        old = self._live(key)
        if old is None:
            raise not_found(res, request.name)
        data = request.data
        subresource = request.subresource
        if subresource not in (None, "status"):
            raise kmock.KubernetesError(
                status=405,
                reason="MethodNotAllowed",
                message=f"subresource {subresource} is not emulated",
                details={},
            )
        status_only = subresource == "status" and self._has_status(res)
        strip_status = subresource is None and self._has_status(res)
        if isinstance(data, list):  # JSON patch
            ops = [
                op
                for op in data
                if not (status_only and not str(op.get("path", "")).startswith("/status"))
                and not (strip_status and str(op.get("path", "")).startswith("/status"))
            ]
            try:
                new = jsonpatch.apply_patch(copy.deepcopy(old), ops, in_place=False)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise invalid(f"the JSON patch cannot be applied: {exc}") from None
        elif isinstance(data, dict):
            expected = (data.get("metadata") or {}).get("resourceVersion")
            if expected is not None and str(expected) != old["metadata"]["resourceVersion"]:
                raise conflict(
                    f'the object has been modified; {res.plural} "{request.name}": '
                    "please apply your changes to the latest version and try again"
                )
            if status_only:
                data = {"status": data.get("status")}
            elif strip_status:
                data = {k: v for k, v in data.items() if k != "status"}
            if replace:
                new = copy.deepcopy(data)
                if strip_status and "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                if status_only:
                    new = {**copy.deepcopy(old), "status": data.get("status")}
            elif "strategic-merge-patch" in request.headers.get("Content-Type", ""):
                new = strategic_merge(old, data)  # what `kubectl apply` sends for built-in kinds
            else:
                new = dict(dicts.patch_dict(copy.deepcopy(old), data))
        else:
            raise invalid("the body must be a JSON object or a JSON patch")
        # Identity is the server's, whatever the client sent.
        new_meta = new.setdefault("metadata", {})
        for field in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if field in old["metadata"]:
                new_meta[field] = old["metadata"][field]
            else:
                new_meta.pop(field, None)
        new.setdefault("apiVersion", old.get("apiVersion"))
        new.setdefault("kind", old.get("kind"))
        if new == old:
            return old  # a no-op: no new version, no event (as the real API server)
        if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }:
            new_meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new_meta["resourceVersion"] = self._next_revision()
        self.objects[key].history.append(new)
        if (
            new_meta.get("deletionTimestamp")
            and not new_meta.get("finalizers")
            and not (_is_pod(res) and new_meta.get("deletionGracePeriodSeconds"))  # the kubelet's to end
        ):
            await self._finalize(res, key)
        else:
            await self._emit(res, "MODIFIED", new)
        return new

    async def _delete(self, request: rendering.Request) -> None:
        res = request.resource
        assert res is not None
        key = (res, request.namespace, request.name)
        if self._live(key) is None:
            raise not_found(res, request.name)
        options = request.data if isinstance(request.data, dict) else {}
        orphan = "Orphan" in (request.params.get("propagationPolicy"), options.get("propagationPolicy"))
        grace = options.get("gracePeriodSeconds", request.params.get("gracePeriodSeconds"))
        await self._delete_key(res, key, orphan=orphan, grace=None if grace is None else int(grace))

    async def _delete_key(
        self, res: Resource, key: tuple[Resource, str | None, str], *, orphan: bool, grace: int | None = None
    ) -> None:
        obj = self._live(key)
        if obj is None:
            return
        if obj["metadata"].get("deletionTimestamp"):
            # A pod already terminating goes now when asked with no grace (what the kubelet does
            # once its containers are gone), unless finalizers still hold it.
            if grace == 0 and _is_pod(res) and obj["metadata"].get("deletionGracePeriodSeconds"):
                if not obj["metadata"].get("finalizers"):
                    await self._finalize(res, key, orphan=orphan)
                    return
                new = copy.deepcopy(obj)
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                new["metadata"]["resourceVersion"] = self._next_revision()
                self.objects[key].history.append(new)
                await self._emit(res, "MODIFIED", new)
            return
        grace_seconds = _pod_grace(res, obj, grace)
        if grace_seconds:
            # Graceful deletion, as the API server does it for a pod bound to a node: it stays,
            # Terminating, until the kubelet has stopped its containers and deletes it with no grace.
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now_timestamp()
            new["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
            new["metadata"]["resourceVersion"] = self._next_revision()
            self.objects[key].history.append(new)
            await self._emit(res, "MODIFIED", new)
            return
        if obj["metadata"].get("finalizers"):
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now_timestamp()
            new["metadata"]["resourceVersion"] = self._next_revision()
            self.objects[key].history.append(new)
            await self._emit(res, "MODIFIED", new)
        else:
            await self._finalize(res, key, orphan=orphan)

    async def _finalize(
        self, res: Resource, key: tuple[Resource, str | None, str], *, orphan: bool = False
    ) -> None:
        """Remove the object for good and garbage-collect its dependents."""
        final = copy.deepcopy(self.objects[key].raw)
        final["metadata"]["resourceVersion"] = self._next_revision()
        self.objects[key].history.append(final)
        self.objects[key].delete()
        await self._emit(res, "DELETED", final)
        if orphan:
            return
        uid = final["metadata"].get("uid")
        for (other_res, namespace, name), other in list(self.objects.items()):
            if other.deleted:
                continue
            refs = other.raw.get("metadata", {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                await self._delete_key(other_res, (other_res, namespace, name), orphan=False)

    # -- request routing --

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # KMock keeps every request for assertions and matches each new one by scanning them all:
        # quadratic over a long run. Keep only the request in hand (nothing here asserts on history).
        del self._requests[:-1]
        for reaction in self._payloads:  # each reaction keeps the requests it served, too
            reaction._requests.clear()
        res = request.resource
        if res is not None and res.plural and request.action is not None and not self._known(res):
            # As an API server without that CRD (e.g. no KEDA): 404 for every verb.
            raise kmock.KubernetesError(
                status=404,
                reason="NotFound",
                details={},
                message=f"the server could not find the requested resource ({res.plural})",
            )
        is_put = request.method == enums.method.PUT and request.name is not None
        if res is not None and (
            request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE) or is_put
        ):
            async with self._lock:
                if request.action == enums.action.CREATE:
                    await self._create(request)
                elif request.action == enums.action.UPDATE or is_put:
                    updated = await self._update(request, replace=is_put)
                    if is_put:
                        return aiohttp.web.json_response(updated)
                elif request.action == enums.action.DELETE:
                    if request.name is None:
                        raise kmock.KubernetesError(
                            status=405,
                            reason="MethodNotAllowed",
                            message="deletecollection is not emulated",
                            details={},
                        )
                    await self._delete(request)
        # Skip KubernetesEmulator._handle (its simpler state changes are replaced above).
        return await super(kmock.KubernetesEmulator, self)._handle(request)


def _is_pod(res: Resource) -> bool:
    return res.group == "" and res.plural == "pods"


def _pod_grace(res: Resource, obj: Mapping[str, Any], grace: int | None) -> int:
    """Seconds of graceful deletion: only for a pod that a kubelet runs (bound to a node)."""
    spec = obj.get("spec") or {}
    if not (_is_pod(res) and spec.get("nodeName")):
        return 0
    return int(grace if grace is not None else spec.get("terminationGracePeriodSeconds", 30))
