"""The read side of the emulator: discovery, list, get and watch (with selectors, tables and resume).

A mixin of :class:`facepipe.sim.emulator.api.FacePipeEmulator`: it reads the state the emulator
keeps (objects, revisions, the bounded event log, printer columns) and writes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from typing import Any

import kmock
from kmock._internal import rendering

from facepipe.sim.emulator.errors import not_found
from facepipe.sim.emulator.selectors import field_selector_matches, label_selector_matches
from facepipe.sim.emulator.tables import kubectl_table, wants_table

Resource = kmock.resource


class EmulatorReads:
    """Discovery, list, get and watch of :class:`FacePipeEmulator` (mixed in; it holds no state)."""

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
        if wants_table(request):
            return kubectl_table(res, items, revision, self._printer_columns.get(res))
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
            raise not_found(res, request.name)
        if wants_table(request):
            return kubectl_table(res, [obj], revision, self._printer_columns.get(res))
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
