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
   strategic merge patches (facepipe.sim.strategic: what ``kubectl apply`` sends),
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
import datetime
import gzip
import importlib.resources
import json
import re
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import dicts, enums, rendering

from facepipe.sim.strategic import strategic_merge

Resource = kmock.resource
_EVENT_LOG_SIZE = 20_000
_VERSION_ORDER = re.compile(r"v(\d+)(?:(alpha|beta)(\d+))?$")


def _version_rank(version: str) -> tuple[int, int, int]:
    """Kubernetes' version priority: GA > beta > alpha, then by numbers."""
    match = _VERSION_ORDER.match(version)
    if not match:
        return (0, 0, 0)
    stage = {"alpha": 1, "beta": 2, None: 3}[match.group(2)]
    return (stage, int(match.group(1)), int(match.group(3) or 0))


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conflict(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason="Conflict", message=message, details={})


def _invalid(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=422, reason="Invalid", message=message, details={})


def _not_found(resource: Resource, name: str | None) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=404, reason="NotFound", message=f'{resource.plural} "{name}" not found', details={}
    )


# --- selectors ---------------------------------------------------------------------------------

_SET_EXPR = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def label_selector_matches(selector: str | None, labels: Mapping[str, str]) -> bool:
    """Equality- and set-based selectors: ``a=b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``."""
    for term in _split_selector(selector or ""):
        term = term.strip()
        if match := _SET_EXPR.match(term):
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if (labels.get(key) in values) != (op == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: Mapping[str, Any]) -> bool:
    for term in _split_selector(selector or ""):
        negate = "!=" in term
        path, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        current: Any = obj
        for part in path.strip().split("."):
            current = current.get(part) if isinstance(current, Mapping) else None
        if (str(current) == value.strip()) == negate:
            return False
    return True


# --- the emulator ------------------------------------------------------------------------------

# Custom kinds of the add-ons a cluster would have: (group/version, plural, kind, subresources).
_KEDA_KINDS = (
    ("keda.sh/v1alpha1", "scaledobjects", "ScaledObject", ("status",)),
    ("keda.sh/v1alpha1", "triggerauthentications", "TriggerAuthentication", ()),
)
_MONITORING_KINDS = (
    ("monitoring.coreos.com/v1", "servicemonitors", "ServiceMonitor", ()),
    ("monitoring.coreos.com/v1", "podmonitors", "PodMonitor", ()),
    ("monitoring.coreos.com/v1", "prometheusrules", "PrometheusRule", ()),
)


@attrs.define(kw_only=True)
class FacePipeEmulator(kmock.KubernetesEmulator):
    """The emulator; call :meth:`register_defaults` (or register resources) before serving."""

    _revision: int = attrs.field(default=0, init=False)
    _event_log: dict[Resource, collections.deque[tuple[int, dict[str, Any]]]] = attrs.field(
        factory=lambda: collections.defaultdict(lambda: collections.deque(maxlen=_EVENT_LOG_SIZE)), init=False
    )
    _printer_columns: dict[Resource, list[dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _gc_tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    # -- resource registration --

    def register_defaults(
        self, crd_paths: Iterable[Path] = (), *, keda: bool = True, monitoring: bool = True
    ) -> None:
        """Built-in kinds (the newest version of each), the given CRDs, KEDA's kinds and
        prometheus-operator's (ServiceMonitor, PodMonitor, PrometheusRule)."""
        # = self.resources.load_bundled(), without its deprecated importlib.resources call.
        bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
        self.resources.load_data(gzip.decompress(bundled))
        newest: dict[tuple[str, str], str] = {}
        for res in list(self.resources):
            key = (res.group, res.plural)
            if key not in newest or _version_rank(res.version) > _version_rank(newest[key]):
                newest[key] = res.version
        for res in list(self.resources):
            if newest[(res.group, res.plural)] != res.version:
                del self.resources[res]
        for path in crd_paths:
            for doc in yaml.safe_load_all(Path(path).read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.register_crd(doc)
        extra = (_KEDA_KINDS if keda else ()) + (_MONITORING_KINDS if monitoring else ())
        for api, plural, kind, subresources in extra:
            self.resources[f"{api}/{plural}"] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=True,
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                subresources=set(subresources),
            )

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            res = Resource(spec["group"], version["name"], names["plural"])
            self.resources[res] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                verbs={"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
                shortnames=set(names.get("shortNames", [])),
                categories=set(names.get("categories", [])),
                subresources=set(version.get("subresources", {}) or {}),
            )
            self._printer_columns[res] = list(version.get("additionalPrinterColumns", []))
        stored = copy.deepcopy(dict(crd))
        meta = stored.setdefault("metadata", {})
        self._revision += 1
        meta.update(
            uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1, resourceVersion=str(self._revision)
        )
        self.objects[
            Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None, meta["name"]
        ] = stored

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
            raise _invalid("the body must be a JSON object")
        body = request.data  # mutated in place: the fallback answers with the stored object by name
        meta = body.setdefault("metadata", {})
        namespaced = self._is_namespaced_info(self._info(res))
        namespace = (request.namespace or meta.get("namespace")) if namespaced else None
        if namespaced:
            if not namespace:
                raise _invalid("metadata.namespace is required")
            meta["namespace"] = namespace
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _invalid("metadata.name or metadata.generateName is required")
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
            creationTimestamp=_now(),
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
        old = self._live(key)
        if old is None:
            raise _not_found(res, request.name)
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
                raise _invalid(f"the JSON patch cannot be applied: {exc}") from None
        elif isinstance(data, dict):
            expected = (data.get("metadata") or {}).get("resourceVersion")
            if expected is not None and str(expected) != old["metadata"]["resourceVersion"]:
                raise _conflict(
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
            raise _invalid("the body must be a JSON object or a JSON patch")
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
            raise _not_found(res, request.name)
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
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = grace_seconds
            new["metadata"]["resourceVersion"] = self._next_revision()
            self.objects[key].history.append(new)
            await self._emit(res, "MODIFIED", new)
            return
        if obj["metadata"].get("finalizers"):
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = _now()
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

    # -- discovery --

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        payload = await super()._serve_version(request)
        assert isinstance(payload, dict)
        # KMock writes "/v1" for the core group, which kubectl cannot map; and subresources
        # carry their parent's short names, which kubectl then reports as ambiguous.
        payload["groupVersion"] = payload["groupVersion"].lstrip("/")
        for entry in payload["resources"]:
            if "/" in entry["name"]:
                entry.update(shortNames=[], singularName="", categories=[])
        return payload

    # -- reads --

    def _matching(self, request: rendering.Request) -> list[dict[str, Any]]:
        label_selector = request.params.get("labelSelector")
        field_selector = request.params.get("fieldSelector")
        items = []
        for (res, namespace, name), obj in self.objects.items():
            if res != request.resource or obj.deleted:
                continue
            if request.namespace is not None and namespace != request.namespace:
                continue
            if request.name is not None and name != request.name:
                continue
            raw = obj.raw
            if not label_selector_matches(label_selector, raw.get("metadata", {}).get("labels") or {}):
                continue
            if not field_selector_matches(field_selector, raw):
                continue
            items.append(raw)
        return sorted(items, key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))

    def _known(self, res: Resource | None) -> bool:
        return res is not None and res in self.resources

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        res = request.resource
        if not self._known(res):
            raise kmock.KubernetesResourceNotFoundError()
        assert res is not None
        async with self._lock:
            items = copy.deepcopy(self._matching(request))
            revision = str(self._revision)
        if _wants_table(request):
            return self._table(res, items, revision)
        return {
            "apiVersion": self._api_version(res),
            "kind": f"{self._kind(res)}List",
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        res = request.resource
        assert res is not None
        async with self._lock:
            obj = self._live((res, request.namespace, request.name or ""))
            obj = copy.deepcopy(obj)
            revision = str(self._revision)
        if obj is None:
            raise _not_found(res, request.name)
        if _wants_table(request):
            return self._table(res, [obj], revision)
        return obj

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        yield b""  # send the headers now: the stream may stay quiet for a long time
        res = request.resource
        assert res is not None
        since_param = request.params.get("resourceVersion")
        label_selector = request.params.get("labelSelector")
        field_selector = request.params.get("fieldSelector")
        bus = self._buses[res]

        def wanted(event: Mapping[str, Any]) -> bool:
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            if request.namespace is not None and meta.get("namespace") != request.namespace:
                return False
            if request.name is not None and meta.get("name") != request.name:
                return False
            return label_selector_matches(
                label_selector, meta.get("labels") or {}
            ) and field_selector_matches(field_selector, obj)

        async with self._lock:
            marker = await bus.mark()
            if since_param in (None, "", "0"):
                # "Any version": the current state as synthetic ADDED events, then changes.
                initial = [{"type": "ADDED", "object": copy.deepcopy(obj)} for obj in self._matching(request)]
                seen = self._revision
            else:
                seen = int(since_param)
                initial = [copy.deepcopy(event) for rv, event in self._event_log[res] if rv > seen]
                seen = max([seen] + [int(e["object"]["metadata"]["resourceVersion"]) for e in initial])
        try:
            for event in initial:
                if wanted(event):
                    yield event
            async for event in bus.stream(since=marker):
                if int(event["object"]["metadata"]["resourceVersion"]) <= seen:
                    continue  # already sent from the log
                if wanted(event):
                    yield event
        finally:
            await bus.unmark(marker)

    # -- kubectl tables --

    def _table(self, res: Resource, items: list[dict[str, Any]], revision: str) -> dict[str, Any]:
        columns = [("Name", "string", lambda o: o["metadata"]["name"])]
        columns += self._columns_for(res)
        columns.append(("Age", "string", lambda o: _age(o["metadata"].get("creationTimestamp"))))
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": revision},
            "columnDefinitions": [
                {
                    "name": name,
                    "type": kind,
                    "format": "name" if name == "Name" else "",
                    "description": "",
                    "priority": 0,
                }
                for name, kind, _ in columns
            ],
            "rows": [
                {
                    "cells": [fn(obj) for _, _, fn in columns],
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
                for obj in items
            ],
        }

    def _columns_for(self, res: Resource) -> list[tuple[str, str, Any]]:
        if res in self._printer_columns:
            columns = []
            for column in self._printer_columns[res]:
                if column.get("jsonPath") == ".metadata.creationTimestamp":
                    continue  # the generic Age column
                path = column["jsonPath"]
                columns.append(
                    (column["name"], column.get("type", "string"), lambda o, path=path: _json_path(o, path))
                )
            return columns
        return _BUILTIN_COLUMNS.get(res.plural, [])


def _is_pod(res: Resource) -> bool:
    return res.group == "" and res.plural == "pods"


def _pod_grace(res: Resource, obj: Mapping[str, Any], grace: int | None) -> int:
    """Seconds of graceful deletion: only for a pod that a kubelet runs (bound to a node)."""
    spec = obj.get("spec") or {}
    if not (_is_pod(res) and spec.get("nodeName")):
        return 0
    return int(grace if grace is not None else spec.get("terminationGracePeriodSeconds", 30))


def _wants_table(request: rendering.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _json_path(obj: Mapping[str, Any], path: str) -> Any:
    current: Any = obj
    for part in path.strip(".").split("."):
        current = current.get(part) if isinstance(current, Mapping) else None
    return current


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    seconds = int((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _ready(obj: Mapping[str, Any]) -> str:
    status = obj.get("status") or {}
    return f"{status.get('readyReplicas', 0)}/{(obj.get('spec') or {}).get('replicas', '-')}"


def _pod_ready(obj: Mapping[str, Any]) -> str:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    containers = (obj.get("spec") or {}).get("containers") or []
    return f"{sum(1 for c in statuses if c.get('ready'))}/{len(containers)}"


def _pod_status(obj: Mapping[str, Any]) -> str:
    """kubectl's STATUS: Terminating, else a waiting/terminated reason, else the phase."""
    if obj["metadata"].get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or []:
            state = container.get("state") or {}
            ended = state.get("waiting") or state.get("terminated") or {}
            reason = ended.get("reason")
            if reason and reason != "Completed":
                return str(reason)
            if key == "initContainerStatuses" and state.get("running"):
                return "Init:Running"
    return str(status.get("phase", "Pending"))


def _restarts(obj: Mapping[str, Any]) -> int:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return sum(int(c.get("restartCount", 0)) for c in statuses)


_BUILTIN_COLUMNS: dict[str, list[tuple[str, str, Any]]] = {
    "pods": [
        ("Ready", "string", _pod_ready),
        ("Status", "string", _pod_status),
        ("Restarts", "integer", _restarts),
        ("IP", "string", lambda o: (o.get("status") or {}).get("podIP", "<none>")),
    ],
    "replicasets": [
        ("Desired", "integer", lambda o: (o.get("spec") or {}).get("replicas", 0)),
        ("Current", "integer", lambda o: (o.get("status") or {}).get("replicas", 0)),
        ("Ready", "integer", lambda o: (o.get("status") or {}).get("readyReplicas", 0)),
    ],
    "deployments": [
        ("Ready", "string", _ready),
        ("Up-to-date", "integer", lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
        ("Available", "integer", lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
    ],
    "configmaps": [("Data", "integer", lambda o: len(o.get("data") or {}))],
    "services": [
        ("Type", "string", lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
        (
            "Port(s)",
            "string",
            lambda o: ",".join(
                f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in (o.get("spec") or {}).get("ports", [])
            ),
        ),
    ],
    "horizontalpodautoscalers": [
        ("Reference", "string", lambda o: "Deployment/" + str(_json_path(o, ".spec.scaleTargetRef.name"))),
        ("MinPods", "integer", lambda o: _json_path(o, ".spec.minReplicas")),
        ("MaxPods", "integer", lambda o: _json_path(o, ".spec.maxReplicas")),
        ("Replicas", "integer", lambda o: _json_path(o, ".status.currentReplicas") or 0),
    ],
    "scaledobjects": [
        ("ScaleTargetName", "string", lambda o: _json_path(o, ".spec.scaleTargetRef.name")),
        ("Min", "integer", lambda o: _json_path(o, ".spec.minReplicaCount")),
        ("Max", "integer", lambda o: _json_path(o, ".spec.maxReplicaCount")),
        (
            "Triggers",
            "string",
            lambda o: ",".join(t.get("type", "") for t in _json_path(o, ".spec.triggers") or []),
        ),
    ],
}


# --- running it --------------------------------------------------------------------------------


class EmulatorServer:
    """The emulator served on 127.0.0.1 from a background thread with its own event loop.

    ``with EmulatorServer(crd_paths=[...]) as server: server.url``. Everything else in the
    process (Kopf, kubectl, tests) talks to it over HTTP, exactly as to an API server.
    """

    def __init__(
        self,
        crd_paths: Iterable[Path] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keda: bool = True,
        monitoring: bool = True,
    ) -> None:
        self._crd_paths = list(crd_paths)
        self._host = host
        self._port = port or None
        self._keda = keda
        self._monitoring = monitoring
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.url = ""
        self.emulator: FacePipeEmulator | None = None

    def start(self) -> str:
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error}") from self._error
        if not self.url:
            raise RuntimeError("the Kubernetes emulator did not start within 30 s")
        return self.url

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = FacePipeEmulator()
        emulator.register_defaults(self._crd_paths, keda=self._keda, monitoring=self._monitoring)
        async with emulator, kmock.Server(emulator, host=self._host, port=self._port) as server:
            self.emulator = emulator
            self.url = f"http://{server.host}:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconfig(path: Path, server_url: str, namespace: str = "default") -> Path:
    """A kubeconfig for kubectl, Kopf and the kubernetes client (token auth, plain HTTP)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "facepipe-sandbox", "cluster": {"server": server_url}}],
        "users": [{"name": "sandbox", "user": {"token": "sandbox"}}],
        "contexts": [
            {
                "name": "facepipe-sandbox",
                "context": {"cluster": "facepipe-sandbox", "user": "sandbox", "namespace": namespace},
            }
        ],
        "current-context": "facepipe-sandbox",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
