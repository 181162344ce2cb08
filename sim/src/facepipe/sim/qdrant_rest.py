"""A Qdrant REST stand-in: Qdrant's HTTP API over an embedded engine, for tests and the cluster simulation.

Why it exists: no Qdrant server binary can be had on these machines, and an outage of
the vector store is a failure that cannot be produced while the store lives inside the
indexer's own process (embedded local mode). This small server puts the same local
engine (``QdrantClient(path=...)``) behind the REST endpoints the pipeline really calls,
so the indexer and the ops-api run as separate processes talking to a vector store they
do not own, which the suite can stop, kill and restart like a real server. Every
request and answer is Qdrant's own pydantic model, and errors come back as Qdrant does
(HTTP status + ``{"status": {"error": ...}}``), so qdrant-client's remote mode raises its
real exceptions. It serves only what face-pipeline uses.

``python -m facepipe.sim.qdrant_rest --path DIR --port P``
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import BaseModel
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

log = logging.getLogger("qdrant-facade")
warnings.filterwarnings("ignore", message="Payload indexes have no effect")


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(item) for item in value]
    return value


class PayloadIndexes:
    """The payload indexes created per collection, as a Qdrant server reports them in a
    collection's ``payload_schema`` (local mode accepts them, does nothing and reports none).
    Kept in a JSON file next to the engine's data, so a restarted server still knows them."""

    def __init__(self, path: str) -> None:
        self.file = Path(path) / "payload_indexes.json"
        self.by_collection: dict[str, dict[str, str]] = (
            json.loads(self.file.read_text()) if self.file.exists() else {}
        )

    def add(self, collection: str, field_name: str, schema: Any) -> None:
        kind = getattr(schema, "value", None) or getattr(schema, "type", None) or str(schema)
        self.by_collection.setdefault(collection, {})[field_name] = str(getattr(kind, "value", kind))
        self._save()

    def drop(self, collection: str) -> None:
        self.by_collection.pop(collection, None)
        self._save()

    def info(self, collection: str, points: int) -> dict[str, qm.PayloadIndexInfo]:
        return {
            name: qm.PayloadIndexInfo(data_type=qm.PayloadSchemaType(kind), points=points)
            for name, kind in self.by_collection.get(collection, {}).items()
        }

    def _save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(json.dumps(self.by_collection))


def build_app(path: str) -> Starlette:
    client = QdrantClient(path=path, force_disable_check_same_thread=True)
    lock = threading.Lock()
    indexes = PayloadIndexes(path)

    def collection_info(name: str) -> qm.CollectionInfo:
        info = client.get_collection(name)
        info.payload_schema = indexes.info(name, info.points_count or 0)
        return info

    def create_collection(name: str, create: qm.CreateCollection) -> bool:
        indexes.drop(name)
        return client.create_collection(name, vectors_config=create.vectors)

    def delete_collection(name: str) -> bool:
        indexes.drop(name)
        return client.delete_collection(name)

    def create_index(name: str, create: qm.CreateFieldIndex) -> qm.UpdateResult:
        client.get_collection(name)  # a missing collection: 404, as a server answers
        indexes.add(name, create.field_name, create.field_schema)
        return qm.UpdateResult(operation_id=0, status=qm.UpdateStatus.COMPLETED)

    def answer(fn: Callable[[], Any]) -> JSONResponse:
        started = time.perf_counter()
        try:
            with lock:
                result = fn()
        except (
            ValueError,
            KeyError,
        ) as exc:  # what local mode raises for a bad request or missing collection
            status = 404 if "not found" in str(exc).lower() else 400
            return JSONResponse({"status": {"error": str(exc)}, "time": 0.0}, status_code=status)
        return JSONResponse({"result": _dump(result), "status": "ok", "time": time.perf_counter() - started})

    async def body(request: Request, model: type[BaseModel] | Any) -> Any:
        raw = await request.json()
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(raw)
        from pydantic import TypeAdapter

        return TypeAdapter(model).validate_python(raw)

    async def exists(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        return answer(lambda: qm.CollectionExistence(exists=client.collection_exists(name)))

    async def collection(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        if request.method == "GET":
            return answer(lambda: collection_info(name))
        if request.method == "DELETE":
            return answer(lambda: delete_collection(name))
        create = await body(request, qm.CreateCollection)
        return answer(lambda: create_collection(name, create))

    async def index(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        create = await body(request, qm.CreateFieldIndex)
        return answer(lambda: create_index(name, create))

    async def upsert(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        operation = await body(request, qm.PointInsertOperations)
        if isinstance(operation, qm.PointsList):
            points: Any = operation.points
        else:
            points = operation.batch
        return answer(lambda: client.upsert(name, points=points))

    async def query(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        q = await body(request, qm.QueryRequest)
        return answer(
            lambda: client.query_points(
                name,
                query=q.query,
                query_filter=q.filter,
                limit=q.limit or 10,
                offset=q.offset,
                with_payload=True if q.with_payload is None else q.with_payload,
                with_vectors=q.with_vector or False,
                score_threshold=q.score_threshold,
            )
        )

    async def scroll(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        s = await body(request, qm.ScrollRequest)

        def run() -> qm.ScrollResult:
            records, offset = client.scroll(
                name,
                scroll_filter=s.filter,
                limit=s.limit or 10,
                offset=s.offset,
                with_payload=True if s.with_payload is None else s.with_payload,
                with_vectors=s.with_vector or False,
            )
            return qm.ScrollResult(points=records, next_page_offset=offset)

        return answer(run)

    async def count(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        c = await body(request, qm.CountRequest)
        return answer(lambda: client.count(name, count_filter=c.filter, exact=True))

    async def delete(request: Request) -> JSONResponse:
        name = request.path_params["name"]
        selector = await body(request, qm.PointsSelector)
        return answer(lambda: client.delete(name, points_selector=selector))

    async def root(_request: Request) -> JSONResponse:
        return JSONResponse({"title": "qdrant-facade (reliability suite)", "version": "local"})

    routes = [
        Route("/", root),
        Route("/collections/{name}/exists", exists),
        Route("/collections/{name}", collection, methods=["GET", "PUT", "DELETE"]),
        Route("/collections/{name}/index", index, methods=["PUT"]),
        Route("/collections/{name}/points", upsert, methods=["PUT"]),
        Route("/collections/{name}/points/query", query, methods=["POST"]),
        Route("/collections/{name}/points/scroll", scroll, methods=["POST"]),
        Route("/collections/{name}/points/count", count, methods=["POST"]),
        Route("/collections/{name}/points/delete", delete, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(build_app(args.path), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
