"""The ops-api: readiness, stats, metrics, face search, DLQ tools and GDPR deletion.

``create_app(settings, backend)`` builds the FastAPI app; ``python -m facepipe.ops_api``
serves it (see ``__main__``). Every error is JSON ``{"error", "message", "status"}``;
mutating endpoints need ``Authorization: Bearer <OPS_API_TOKEN>`` when that is set.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Query, UploadFile
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel, Field

from facepipe.core import metrics
from facepipe.core.errors import PermanentError
from facepipe.core.settings import Settings, get_settings
from facepipe.core.tenancy import is_valid_tenant_id
from facepipe.ops_api import depth as depth_mod
from facepipe.ops_api import dlq as dlq_mod
from facepipe.ops_api.api_errors import ApiError, BodySizeLimit, check_bearer_token, install_error_handlers
from facepipe.ops_api.backend import OpsBackend
from facepipe.ops_api.readiness import ReadinessProbe
from facepipe.ops_api.search import MAX_TOP_K, search_image

log = logging.getLogger("facepipe.ops_api")

# Set by `facepipe up`: the local stack's addresses, served at GET /local so a CLI in
# another terminal finds Redis and S3 without any environment of its own.
LOCAL_INFO_ENV = "FACEPIPE_LOCAL_INFO"
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
SHA_PATTERN = re.compile(r"^[0-9A-Za-z_-]{1,128}$")

TenantQuery = Annotated[str, Query(description="tenant whose data the call touches", min_length=1)]


def _tenant(tenant_id: str) -> str:
    if not is_valid_tenant_id(tenant_id):
        raise ApiError(
            400,
            "invalid_tenant_id",
            f"tenant_id {tenant_id!r} is invalid: 1-63 characters of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit, without '..'",
        )
    return tenant_id


def _stream(settings: Settings, name: str) -> str:
    try:
        return dlq_mod.resolve_source_stream(name, settings.pipeline_streams)
    except dlq_mod.UnknownStreamError as exc:
        raise ApiError(400, "unknown_stream", str(exc)) from None


class ReplayRequest(BaseModel):
    stream: str = Field(description="a pipeline stream (or its ':dlq' name) whose DLQ to replay")
    ids: list[str] | None = Field(
        None, description="DLQ entry ids to replay; omit and set all=true for every one"
    )
    all: bool = Field(False, description="replay every entry of the DLQ")


DEDUP_STATS_MAX_AGE_S = 15.0


def dedup_stats(backend: OpsBackend) -> dict[str, Any]:
    """Keys and memory under ``dedup:``: a SCAN of the whole cache, so reused for a few seconds
    (Prometheus scrapes every 15-30 s; a large cache must not be walked on every request)."""
    now = time.monotonic()
    cached = backend.dedup_stats_cache
    if cached is not None and now - cached[0] < DEDUP_STATS_MAX_AGE_S:
        return cached[1]
    stats = backend.dedup.stats()
    backend.dedup_stats_cache = (now, stats)
    return stats


def _update_stream_gauges(backend: OpsBackend) -> list[depth_mod.StreamDepth]:
    depths = depth_mod.pipeline_depths(backend.redis, backend.settings.pipeline_streams)
    for depth in depths:
        metrics.STREAM_LENGTH.labels(stream=depth.stream).set(depth.length)
        metrics.DLQ_LENGTH.labels(stream=depth.stream).set(depth.dlq_length)
        for group in depth.groups:
            metrics.STREAM_LAG.labels(stream=depth.stream, group=group.name).set(group.lag)
            metrics.STREAM_PENDING.labels(stream=depth.stream, group=group.name).set(group.pending)
            metrics.STREAM_CONSUMERS.labels(stream=depth.stream, group=group.name).set(group.consumers)
        if not any(g.name == backend.settings.redis_group_name for g in depth.groups):
            # No consumer group yet: nobody has read anything, so everything is lag. The
            # autoscalers must see that backlog before the first worker ever starts.
            group = backend.settings.redis_group_name
            metrics.STREAM_LAG.labels(stream=depth.stream, group=group).set(depth.length)
            metrics.STREAM_PENDING.labels(stream=depth.stream, group=group).set(0)
            metrics.STREAM_CONSUMERS.labels(stream=depth.stream, group=group).set(0)
    return depths


def _readiness_checks(backend: OpsBackend) -> dict[str, Any]:
    settings = backend.settings

    def models() -> None:
        backend.models  # noqa: B018 - loads once; raises with the reason when files are missing

    def storage() -> None:
        client = backend.store.client
        missing = [b for b in backend.store.buckets if not client.bucket_exists(b)]
        if missing:
            raise RuntimeError(f"buckets missing on {settings.minio_endpoint}: {', '.join(missing)}")

    def vector_db() -> None:
        index = backend.index
        if index.vector_size() is None:
            raise RuntimeError(f"collection {settings.qdrant_collection!r} does not exist yet")

    def queue() -> None:
        backend.redis.ping()

    def dedup_cache() -> None:
        if not backend.dedup.healthy():  # the reads a real check makes; writes nothing
            raise RuntimeError("Redis did not answer the dedup cache's read-only check")

    return {
        "models": models,
        "storage": storage,
        "vector_db": vector_db,
        "queue": queue,
        "dedup_cache": dedup_cache,
    }


def create_app(
    settings: Settings | None = None, backend: OpsBackend | None = None, warm_models: bool = True
) -> FastAPI:
    settings = settings or get_settings()
    backend = backend or OpsBackend(settings)
    qdrant = (
        f"Qdrant (embedded at {settings.qdrant_path})"
        if settings.qdrant_embedded
        else f"Qdrant {settings.qdrant_url}"
    )
    probe = ReadinessProbe(
        _readiness_checks(backend),
        targets={
            "storage": f"S3 {settings.minio_endpoint}",
            "vector_db": qdrant,
            "queue": "Redis",
            "dedup_cache": "Redis",
            "models": "model loading",
        },
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm_models:
            # Load the models in the background: /ready reports them healthy as soon as they are.
            threading.Thread(target=_warm, args=(backend,), name="warm-models", daemon=True).start()
        yield
        probe.close()
        backend.close()

    app = FastAPI(
        title="face-pipeline ops-api",
        version="0.1.0",
        description="Readiness, stats, metrics, tenant-scoped face search, DLQ tools and GDPR deletion. "
        "Mutating endpoints need `Authorization: Bearer <OPS_API_TOKEN>` when it is set.",
        lifespan=lifespan,
        # No 307 from "/tenants/0%2F" to "/tenants/0": a client following it would purge another tenant.
        redirect_slashes=False,
    )
    app.state.backend = backend
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)

    def require_token(authorization: Annotated[str | None, Header()] = None) -> None:
        check_bearer_token(settings.ops_api_token, authorization)

    @app.get("/", summary="What this service offers")
    def index() -> dict[str, Any]:
        return {
            "service": "face-pipeline ops-api",
            "docs": "/docs",
            "endpoints": [
                "/ready",
                "/stats",
                "/metrics",
                "POST /search",
                "/dlq",
                "POST /dlq/replay",
                "DELETE /images/{image_sha256}?tenant_id=",
                "DELETE /tenants/{tenant_id}",
            ],
            "local_mode": bool(os.environ.get(LOCAL_INFO_ENV)),
        }

    @app.get("/ready", summary="Readiness of models, storage, vector DB, queue and dedup cache (503 if not)")
    def ready() -> JSONResponse:
        report = probe.run()
        for name, state in report.checks.items():
            metrics.READY.labels(check=name).set(1 if state == "healthy" else 0)
        body = report.to_json()
        loaded = backend.models_loaded
        body["provider"] = loaded.provider if loaded else None
        body["model_pack"] = settings.model_pack
        return JSONResponse(body, status_code=200 if report.ready else 503)

    @app.get("/stats", summary="Cluster-wide counters and timings, dedup stats and stream depth")
    def stats(tenant_id: Annotated[str | None, Query()] = None) -> dict[str, Any]:
        body: dict[str, Any] = backend.stats.snapshot(_tenant(tenant_id) if tenant_id else None)
        if tenant_id:
            body["tenant_id"] = tenant_id
        body["dedup_stats"] = dedup_stats(backend)
        body["streams"] = {d.stream: d.to_json() for d in _update_stream_gauges(backend)}
        return body

    @app.get("/metrics", summary="Prometheus metrics, including stream length, lag and pending")
    def prometheus() -> Response:
        _update_stream_gauges(backend)
        dedup = dedup_stats(backend)
        metrics.DEDUP_KEYS.set(dedup.get("keys", 0))
        metrics.DEDUP_MEMORY_BYTES.set(dedup.get("memory_bytes", 0))
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.post("/search", summary="Faces of one tenant similar to the faces in an uploaded image")
    def search(
        image: Annotated[UploadFile, File(description="JPEG, PNG or WebP, at most MAX_UPLOAD_BYTES")],
        tenant_id: Annotated[str, Form(description="only this tenant's faces are searched")],
        top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 10,
        site: Annotated[str | None, Form(description="only faces from this site")] = None,
    ) -> dict[str, Any]:
        tenant = _tenant(tenant_id)
        data = image.file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ApiError(
                413,
                "payload_too_large",
                f"image is over the upload limit of {settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)",
            )
        if not data:
            raise ApiError(400, "empty_upload", "the uploaded image is empty")
        try:
            return search_image(settings, backend.models, backend.index, data, tenant, top_k, site or None)
        except PermanentError as exc:
            raise _upload_error(image.filename or "upload", exc) from None

    @app.get("/dlq", summary="Entries of the dead-letter queues (oldest first)")
    def dlq_list(
        stream: Annotated[str | None, Query(description="a pipeline stream; omit for all")] = None,
        count: Annotated[int, Query(ge=1, le=dlq_mod.MAX_LIST)] = 100,
        after: Annotated[str | None, Query(description="only entries after this id (paging)")] = None,
    ) -> dict[str, Any]:
        if after is not None and not STREAM_ID.match(after):
            raise ApiError(
                400, "invalid_id", f"after={after!r} is not a stream entry id like 1700000000000-0"
            )
        streams = [_stream(settings, stream)] if stream else settings.pipeline_streams
        entries = []
        for name in streams:
            entries.extend(dlq_mod.list_entries(backend.redis, name, count=count, after=after))
        lengths = {name: int(backend.redis.xlen(f"{name}:dlq")) for name in streams}
        return {"entries": entries, "lengths": lengths}

    @app.post(
        "/dlq/replay",
        summary="Re-publish DLQ entries to their source stream",
        dependencies=[Depends(require_token)],
    )
    def dlq_replay(body: ReplayRequest) -> dict[str, Any]:
        stream = _stream(settings, body.stream)
        if body.ids is None and not body.all:
            raise ApiError(
                400, "nothing_selected", "give the DLQ entry ids to replay in 'ids', or set 'all': true"
            )
        if body.ids is not None:
            bad = [i for i in body.ids if not STREAM_ID.match(i)]
            if bad:
                raise ApiError(400, "invalid_id", f"not stream entry ids: {', '.join(map(repr, bad[:5]))}")
        result = dlq_mod.replay(backend.redis, stream, None if body.all else body.ids)
        log.info(
            "replayed %d DLQ entries of %s to the stream (%d not found)",
            len(result.replayed),
            stream,
            len(result.missing),
        )
        return {
            "stream": stream,
            "replayed": result.replayed,
            "missing": result.missing,
            "count": len(result.replayed),
        }

    @app.delete(
        "/images/{image_sha256}",
        summary="Delete one image's faces, artifacts and dedup entries",
        dependencies=[Depends(require_token)],
    )
    def delete_image(image_sha256: str, tenant_id: TenantQuery) -> dict[str, Any]:
        from facepipe.store import deletion

        tenant = _tenant(tenant_id)
        if not SHA_PATTERN.match(image_sha256):
            raise ApiError(400, "invalid_image_sha256", f"{image_sha256!r} is not an image id")
        report = deletion.delete_image(
            settings,
            tenant,
            image_sha256,
            redis_client=backend.redis,
            store=backend.store,
            index=backend.index,
        )
        return _report_json(report)

    @app.delete(
        "/tenants/{tenant_id}",
        summary="Delete everything of one tenant (GDPR)",
        dependencies=[Depends(require_token)],
    )
    def delete_tenant(tenant_id: str) -> dict[str, Any]:
        from facepipe.store import deletion

        tenant = _tenant(tenant_id)
        report = deletion.delete_tenant(
            settings, tenant, redis_client=backend.redis, store=backend.store, index=backend.index
        )
        return _report_json(report)

    @app.get("/local", summary="Local mode only: where this stack's Redis and S3 are (for the CLI)")
    def local() -> dict[str, Any]:
        raw = os.environ.get(LOCAL_INFO_ENV)
        if not raw:
            raise ApiError(404, "not_local_mode", "this ops-api was not started by `facepipe up`")
        return json.loads(raw)

    return app


def _upload_error(name: str, exc: PermanentError) -> ApiError:
    if exc.reason == "image_too_large":
        return ApiError(413, exc.reason, f"{name}: {exc.message}")
    if exc.reason == "undecodable_image":
        # Pillow's own wording names internal objects; say what the user needs to know.
        return ApiError(415, exc.reason, f"{name} is not a readable image: upload a JPEG, PNG or WebP file")
    if exc.reason == "unsupported_image_format":
        return ApiError(415, exc.reason, f"{name}: {exc.message}")
    return ApiError(400, exc.reason, f"{name}: {exc.message}")


def _report_json(report: Any) -> dict[str, Any]:
    if hasattr(report, "to_json"):
        return report.to_json()
    if hasattr(report, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(report)
    return dict(report)


def _warm(backend: OpsBackend) -> None:
    try:
        backend.models  # noqa: B018
    except Exception as exc:  # reported by /ready; the API keeps serving the rest
        log.error("could not load the face models: %s", exc)
