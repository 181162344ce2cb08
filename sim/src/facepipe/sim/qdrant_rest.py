"""A Qdrant REST stand-in: Qdrant's HTTP API over Qdrant Edge, for tests and the cluster simulation.

Why it exists: no Qdrant server binary can be had on these machines, and an outage of
the vector store is a failure that cannot be produced while the store lives inside the
indexer's own process (embedded mode). This small server puts the embedded engine
(:class:`facepipe.store.vectors.edge_engine.EdgeStore`, one Edge shard per collection
under ``--path``) behind the REST endpoints face-pipeline calls, so the indexer and the
ops-api run as separate processes talking to a vector store they do not own, which a
suite can stop, kill -9 and restart like a real server.

Every request body is validated as qdrant-client's own pydantic model
(``qdrant_client.http.models``) and every answer is built as one, so qdrant-client's
remote mode parses them exactly as a server's. Errors come back as Qdrant's do (HTTP
status + ``{"status": {"error": ...}}``), so qdrant-client raises its real exceptions.
It serves only the subset face-pipeline uses (:data:`ENDPOINTS`); anything else — another
endpoint, a request field it does not implement, a filter outside the project's spec
(keyword equalities) — gets an explicit error, never a silent success.

``python -m facepipe.sim.qdrant_rest --path DIR --port P`` (or ``--fd N``: serve a listening
socket inherited from the parent, which bound it: :func:`facepipe.sim.backing.start_qdrant_stand_in`)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel, TypeAdapter, ValidationError
from qdrant_client.http import models as qm
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from facepipe.sim.qdrant_rest_models import (
    ApiError,
    collection_info,
    point_id,
    point_ids,
    query_vector,
    refuse_fields,
    spec_filter,
    with_flag,
)
from facepipe.store.vectors.edge import edge_filter
from facepipe.store.vectors.edge_engine import EdgeCollection, EdgeStore, plain_vector
from facepipe.store.vectors.points import VectorStoreError

log = logging.getLogger("qdrant-stand-in")

ENDPOINTS = (
    ("GET", "/"),
    ("GET", "/collections"),
    ("GET", "/aliases"),
    ("POST", "/collections/aliases"),
    ("GET", "/collections/{name}/aliases"),
    ("GET", "/collections/{name}/exists"),
    ("GET|PUT|DELETE", "/collections/{name}"),
    ("PUT", "/collections/{name}/index"),
    ("PUT|POST", "/collections/{name}/points"),
    ("POST", "/collections/{name}/points/query"),
    ("POST", "/collections/{name}/points/scroll"),
    ("POST", "/collections/{name}/points/count"),
    ("POST", "/collections/{name}/points/delete"),
)
# `params` (hnsw_ef, exact) is accepted: the engine searches exactly whatever it says.
QUERY_FIELDS = {
    "query",
    "filter",
    "params",
    "score_threshold",
    "limit",
    "offset",
    "with_vector",
    "with_payload",
}


class Collections:
    """The store and its open collections (opened on first use, kept open); aliases resolve as in Qdrant."""

    def __init__(self, root: Path) -> None:
        self.store = EdgeStore(root)
        self._open: dict[str, EdgeCollection] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> str:
        """The collection ``name`` stands for: itself, or the one an alias of that name points at."""
        return self.store.aliases().get(name, name)

    def get(self, name: str) -> EdgeCollection:
        name = self.resolve(name)
        with self._lock:
            if name not in self._open:
                collection = self.store.open(name)
                if collection is None:
                    raise ApiError(404, f"Not found: Collection `{name}` doesn't exist!")
                self._open[name] = collection
            return self._open[name]

    def exists(self, name: str) -> bool:
        return self.store.exists(self.resolve(name))

    def change_aliases(self, actions: list[Any]) -> None:
        """One request's alias actions, applied together (Qdrant applies them atomically)."""
        point: dict[str, str] = {}
        remove: list[str] = []
        for action in actions:
            if isinstance(action, qm.CreateAliasOperation):
                create = action.create_alias
                if create.alias_name in self.store.names():
                    raise ApiError(400, f"Wrong input: Collection `{create.alias_name}` already exists!")
                if not self.store.exists(create.collection_name):
                    raise ApiError(404, f"Not found: Collection `{create.collection_name}` doesn't exist!")
                point[create.alias_name] = create.collection_name
            elif isinstance(action, qm.DeleteAliasOperation):
                remove.append(action.delete_alias.alias_name)
                point.pop(action.delete_alias.alias_name, None)
            else:
                raise ApiError(400, "Wrong input: the Qdrant stand-in creates and deletes aliases only")
        self.store.update_aliases(point, remove)

    def create(self, name: str, size: int, distance: str) -> None:
        with self._lock:
            if self.store.exists(name):
                raise ApiError(409, f"Wrong input: Collection `{name}` already exists!")
            self._open[name] = self.store.create(name, size, distance)

    def drop(self, name: str) -> bool:
        with self._lock:
            collection = self._open.pop(name, None)
            if collection is not None:
                collection.close()
            existed = self.store.exists(name)
            self.store.drop(name)
            return existed

    def close(self) -> None:
        with self._lock:
            for collection in self._open.values():
                collection.close()
            self._open.clear()
            self.store.close()


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list):
        return [_dump(item) for item in value]
    return value


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": {"error": message}, "time": 0.0}, status_code=status)


async def _answer(fn: Callable[[], Any]) -> JSONResponse:
    started = time.perf_counter()
    try:
        result = await run_in_threadpool(fn)
    except ApiError as exc:
        return _error(exc.status, exc.message)
    except (VectorStoreError, ValueError) as exc:  # the engine refused the request (wrong size, bad name)
        return _error(400, f"Wrong input: {exc}")
    return JSONResponse({"result": _dump(result), "status": "ok", "time": time.perf_counter() - started})


async def _body(request: Request, model: Any) -> Any:
    try:
        raw = await request.json()
        return TypeAdapter(model).validate_python(raw)
    except (ValueError, ValidationError) as exc:
        raise ApiError(400, f"Format error in JSON body: {exc}") from exc


def _updated() -> qm.UpdateResult:
    return qm.UpdateResult(operation_id=0, status=qm.UpdateStatus.COMPLETED)


def build_app(path: str) -> Starlette:
    collections = Collections(Path(path))

    def route(handler: Callable[..., Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                return await handler(request, request.path_params.get("name", ""))
            except ApiError as exc:
                return _error(exc.status, exc.message)

        return endpoint

    async def exists(_request: Request, name: str) -> JSONResponse:
        return await _answer(lambda: qm.CollectionExistence(exists=collections.exists(name)))

    async def listing(_request: Request, _name: str) -> JSONResponse:
        names = collections.store.names()
        return await _answer(
            lambda: qm.CollectionsResponse(collections=[qm.CollectionDescription(name=n) for n in names])
        )

    async def aliases(_request: Request, name: str) -> JSONResponse:
        def run() -> qm.CollectionsAliasesResponse:
            pairs = collections.store.aliases().items()
            return qm.CollectionsAliasesResponse(
                aliases=[
                    qm.AliasDescription(alias_name=alias, collection_name=target)
                    for alias, target in sorted(pairs)
                    if not name or target == name
                ]
            )

        return await _answer(run)

    async def change_aliases(request: Request, _name: str) -> JSONResponse:
        change = await _body(request, qm.ChangeAliasesOperation)
        return await _answer(lambda: collections.change_aliases(list(change.actions)) or True)

    async def collection(request: Request, name: str) -> JSONResponse:
        if request.method == "GET":
            return await _answer(lambda: collection_info(collections.get(name)))
        if request.method == "DELETE":
            return await _answer(lambda: collections.drop(name))
        create = await _body(request, qm.CreateCollection)
        refuse_fields(create, "create collection", allowed={"vectors"})
        if not isinstance(create.vectors, qm.VectorParams):
            raise ApiError(400, "Wrong input: the stand-in keeps one unnamed dense vector per collection")
        vectors = create.vectors
        return await _answer(
            lambda: collections.create(name, vectors.size, vectors.distance.value.lower()) or True
        )

    async def index(request: Request, name: str) -> JSONResponse:
        create = await _body(request, qm.CreateFieldIndex)
        schema = create.field_schema
        is_keyword = schema == qm.PayloadSchemaType.KEYWORD or isinstance(schema, qm.KeywordIndexParams)
        if not is_keyword:
            raise ApiError(400, f"Wrong input: the stand-in builds keyword indexes only, got {schema!r}")
        is_tenant = bool(getattr(schema, "is_tenant", False))

        def run() -> qm.UpdateResult:
            collections.get(name).create_keyword_index(create.field_name, is_tenant=is_tenant)
            return _updated()

        return await _answer(run)

    async def retrieve(request: Request, name: str) -> JSONResponse:
        ask = await _body(request, qm.PointRequest)
        refuse_fields(ask, "retrieve", allowed={"ids", "with_payload", "with_vector"})
        payload = with_flag(ask.with_payload, "with_payload", default=True)
        if payload or with_flag(ask.with_vector, "with_vector", default=False):
            raise ApiError(400, "Wrong input: the Qdrant stand-in retrieves ids only (no payload, no vector)")

        def run() -> list[qm.Record]:
            found = collections.get(name).retrieve_ids(point_ids(ask.ids))
            return [qm.Record(id=point_id(pid)) for pid in found]

        return await _answer(run)

    async def upsert(request: Request, name: str) -> JSONResponse:
        if request.method == "POST":
            return await retrieve(request, name)
        operation = await _body(request, qm.PointInsertOperations)
        if isinstance(operation, qm.PointsList):
            refuse_fields(operation, "upsert", allowed={"points"})
            ids = [p.id for p in operation.points]
            vectors = [p.vector for p in operation.points]
            payloads = [p.payload or {} for p in operation.points]
        else:
            refuse_fields(operation, "upsert", allowed={"batch"})
            ids, vectors = list(operation.batch.ids), list(operation.batch.vectors)  # type: ignore[arg-type]
            payloads = list(operation.batch.payloads or [{} for _ in ids])
        if not all(isinstance(v, list) and all(isinstance(x, float | int) for x in v) for v in vectors):
            raise ApiError(400, "Wrong input: the stand-in stores one unnamed dense vector per point")

        def run() -> qm.UpdateResult:
            collections.get(name).upsert(point_ids(ids), vectors, payloads)  # type: ignore[arg-type]
            return _updated()

        return await _answer(run)

    async def query(request: Request, name: str) -> JSONResponse:
        q = await _body(request, qm.QueryRequest)
        refuse_fields(q, "query", allowed=QUERY_FIELDS)
        vector = query_vector(q.query)
        flt = edge_filter(spec_filter(q.filter))

        def run() -> qm.QueryResponse:
            points = collections.get(name).query(
                vector,
                flt,
                q.limit or 10,
                offset=q.offset or 0,
                score_threshold=q.score_threshold,
                with_payload=with_flag(q.with_payload, "with_payload", default=False),
                with_vector=with_flag(q.with_vector, "with_vector", default=False),
            )
            return qm.QueryResponse(
                points=[
                    qm.ScoredPoint(
                        id=point_id(p.id),
                        version=p.version,
                        score=p.score,
                        payload=p.payload,
                        vector=plain_vector(p.vector),
                    )
                    for p in points
                ]
            )

        return await _answer(run)

    async def scroll(request: Request, name: str) -> JSONResponse:
        s = await _body(request, qm.ScrollRequest)
        refuse_fields(s, "scroll", allowed={"offset", "limit", "filter", "with_payload", "with_vector"})
        flt = edge_filter(spec_filter(s.filter))

        def run() -> qm.ScrollResult:
            records, offset = collections.get(name).scroll(
                flt,
                s.limit or 10,
                point_ids([s.offset])[0] if s.offset is not None else None,
                with_payload=with_flag(s.with_payload, "with_payload", default=True),
                with_vector=with_flag(s.with_vector, "with_vector", default=False),
            )
            return qm.ScrollResult(
                points=[
                    qm.Record(id=point_id(r.id), payload=r.payload, vector=plain_vector(r.vector))
                    for r in records
                ],
                next_page_offset=point_id(offset) if offset is not None else None,
            )

        return await _answer(run)

    async def count(request: Request, name: str) -> JSONResponse:
        c = await _body(request, qm.CountRequest)
        refuse_fields(c, "count", allowed={"filter", "exact"})
        flt = edge_filter(spec_filter(c.filter))
        return await _answer(lambda: qm.CountResult(count=collections.get(name).count(flt)))

    async def delete(request: Request, name: str) -> JSONResponse:
        selector = await _body(request, qm.PointsSelector)

        def run() -> qm.UpdateResult:
            if isinstance(selector, qm.PointIdsList):
                refuse_fields(selector, "delete", allowed={"points"})
                collections.get(name).delete_ids(point_ids(selector.points))
            else:
                refuse_fields(selector, "delete", allowed={"filter"})
                flt = edge_filter(spec_filter(selector.filter))
                if flt is None:
                    raise ApiError(400, "Wrong input: delete needs a filter with at least one condition")
                collections.get(name).delete(flt)
            return _updated()

        return await _answer(run)

    async def root(_request: Request, _name: str) -> JSONResponse:
        return JSONResponse({"title": "qdrant REST stand-in (Qdrant Edge)", "version": "edge"})

    async def unsupported(request: Request, _name: str) -> JSONResponse:
        served = "; ".join(f"{method} {path}" for method, path in ENDPOINTS)
        return _error(
            501,
            f"Not implemented: the Qdrant stand-in does not serve {request.method} {request.url.path} "
            f"(it serves only what face-pipeline calls: {served})",
        )

    routes = [
        Route("/", route(root)),
        Route("/collections", route(listing)),
        Route("/aliases", route(aliases)),
        Route("/collections/aliases", route(change_aliases), methods=["POST"]),
        Route("/collections/{name}/aliases", route(aliases)),
        Route("/collections/{name}/exists", route(exists)),
        Route("/collections/{name}", route(collection), methods=["GET", "PUT", "DELETE"]),
        Route("/collections/{name}/index", route(index), methods=["PUT"]),
        Route("/collections/{name}/points", route(upsert), methods=["PUT", "POST"]),
        Route("/collections/{name}/points/query", route(query), methods=["POST"]),
        Route("/collections/{name}/points/scroll", route(scroll), methods=["POST"]),
        Route("/collections/{name}/points/count", route(count), methods=["POST"]),
        Route("/collections/{name}/points/delete", route(delete), methods=["POST"]),
        Route("/{rest:path}", route(unsupported), methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            collections.close()  # flushes and closes every shard, then drops the folder's lock

    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on with --port (a pod: 0.0.0.0)"
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="listen on HOST:PORT")
    where.add_argument("--fd", type=int, help="serve this inherited listening socket")
    args = parser.parse_args()
    config = uvicorn.Config(
        build_app(args.path), host=args.host, port=args.port or 0, log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=None if args.fd is None else [socket.socket(fileno=args.fd)])


if __name__ == "__main__":
    main()
