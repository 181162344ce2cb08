"""The simulation's controllers talk to the API emulator over HTTP, as real controllers do.

An async client (JSON, merge patches, watches), informers (list, then watch, into a
cache, with listeners) and a keyed work queue: the pieces client-go gives a controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from facepipe.operator.kube import CONFIG_MAP, DEPLOYMENT, SECRET, SERVICE, Kind

log = logging.getLogger("facepipe.sim")

POD = Kind("v1", "Pod", "pods")
REPLICA_SET = Kind("apps/v1", "ReplicaSet", "replicasets")
ENDPOINTS = Kind("v1", "Endpoints", "endpoints")
ENDPOINT_SLICE = Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices")
PVC = Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
NAMESPACE = Kind("v1", "Namespace", "namespaces", namespaced=False)
__all__ = [
    "CONFIG_MAP",
    "DEPLOYMENT",
    "ENDPOINTS",
    "ENDPOINT_SLICE",
    "NAMESPACE",
    "POD",
    "PVC",
    "REPLICA_SET",
    "SECRET",
    "SERVICE",
    "Api",
    "ApiError",
    "Informer",
    "Kind",
    "WorkQueue",
]

Key = tuple[str, str]  # (namespace, name)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


class Api:
    """JSON requests to the API (the emulator's URL); one aiohttp session per event loop."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Accept": "application/json", "Content-Type": content_type}
        timeout = aiohttp.ClientTimeout(total=30)
        async with self._client().request(
            method, self.url + path, data=data, headers=headers, params=params, timeout=timeout
        ) as response:
            text = await response.text()
            payload = json.loads(text) if text else {}
            if response.status >= 400:
                message = payload.get("message", text[:300]) if isinstance(payload, dict) else text[:300]
                raise ApiError(response.status, message)
            return payload if isinstance(payload, dict) else {}

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", kind.path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(
        self, kind: Kind, namespace: str | None = None, selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        params = {"labelSelector": selector} if selector else None
        answer = await self.request("GET", kind.path(namespace), params=params)
        return list(answer.get("items") or []), str((answer.get("metadata") or {}).get("resourceVersion", ""))

    async def create(self, kind: Kind, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"].get("namespace")
        return await self.request("POST", kind.path(namespace), body=dict(body))

    async def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            kind.path(namespace, name, subresource),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )

    async def delete(self, kind: Kind, namespace: str | None, name: str, *, grace: int | None = None) -> bool:
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if grace is not None:
            body["gracePeriodSeconds"] = grace
        try:
            await self.request("DELETE", kind.path(namespace, name), body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def watch(self, kind: Kind, since: str) -> AsyncIterator[dict[str, Any]]:
        params = {"watch": "true", "resourceVersion": since, "allowWatchBookmarks": "false"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
        async with self._client().get(self.url + kind.path(None), params=params, timeout=timeout) as response:
            if response.status >= 400:
                raise ApiError(response.status, (await response.text())[:300])
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


Listener = Callable[[str, dict[str, Any]], None]


class Informer:
    """One kind, every namespace: a cache kept by list-then-watch, and listeners told of changes."""

    def __init__(self, api: Api, kind: Kind) -> None:
        self.api = api
        self.kind = kind
        self.cache: dict[Key, dict[str, Any]] = {}
        self.listeners: list[Listener] = []
        self.synced = asyncio.Event()

    def items(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return [obj for (ns, _), obj in self.cache.items() if namespace is None or ns == namespace]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cache.get((namespace, name))

    def _tell(self, event: str, obj: dict[str, Any]) -> None:
        for listener in self.listeners:
            try:
                listener(event, obj)
            except Exception:  # a listener's bug must not stop the informer
                log.exception("listener of %s failed", self.kind.plural)

    async def run(self) -> None:
        while True:
            try:
                items, version = await self.api.list(self.kind)
                fresh = {key_of(obj): obj for obj in items}
                for key in set(self.cache) - set(fresh):
                    self._tell("DELETED", self.cache.pop(key))
                for key, obj in fresh.items():
                    self.cache[key] = obj
                    self._tell("MODIFIED", obj)
                self.synced.set()
                async for event in self.api.watch(self.kind, version):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR" or "metadata" not in obj:
                        break  # e.g. too old a version: list again
                    if event["type"] == "DELETED":
                        self.cache.pop(key_of(obj), None)
                    else:
                        self.cache[key_of(obj)] = obj
                    self._tell(event["type"], obj)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, ApiError, OSError, ValueError) as exc:
                log.debug("watch of %s broke (%s); listing again", self.kind.plural, exc)
            await asyncio.sleep(0.5)


class WorkQueue:
    """Keys to reconcile, each at most once in the queue; a failed key comes back after a delay."""

    def __init__(self, name: str, reconcile: Callable[[Key], Awaitable[None]], *, workers: int = 1) -> None:
        self.name = name
        self._reconcile = reconcile
        self._pending: set[Key] = set()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._active: set[Key] = set()
        self._again: set[Key] = set()
        self._workers = workers

    def add(self, key: Key) -> None:
        if key in self._active:
            self._again.add(key)  # reconcile once more when the running pass ends
        elif key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def add_later(self, key: Key, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self.add, key)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(self._workers):
                group.create_task(self._work())

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            self._active.add(key)
            try:
                await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status != 409:  # a conflict is routine: the next pass sees the newer object
                    log.warning("%s %s: %s", self.name, "/".join(key), exc)
                self.add_later(key, 0.5)
            except Exception:
                log.exception("%s %s failed", self.name, "/".join(key))
                self.add_later(key, 2.0)
            finally:
                self._active.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)


@contextlib.asynccontextmanager
async def running(*coroutines: Awaitable[None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run background loops for the duration of the block; cancel them on the way out."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
