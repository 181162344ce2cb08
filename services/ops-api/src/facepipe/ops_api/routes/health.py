"""What the service offers (/), readiness (/ready), figures (/stats) and Prometheus (/metrics)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from facepipe.core import metrics
from facepipe.core.errors import TransientError
from facepipe.ops_api.dependencies import AppSettings, Backend, Readiness, checked_tenant
from facepipe.ops_api.figures import (
    clear_redis_gauges,
    dedup_stats,
    update_dedup_gauges,
    update_stream_gauges,
)
from facepipe.ops_api.routes.local import local_mode

log = logging.getLogger("facepipe.ops_api")

router = APIRouter()

ENDPOINTS = (
    "/ready",
    "/stats",
    "/metrics",
    "POST /search",
    "/dlq",
    "POST /dlq/replay",
    "DELETE /images/{image_sha256}?tenant_id=",
    "DELETE /tenants/{tenant_id}",
)


@router.get("/", summary="What this service offers")
def index() -> dict[str, Any]:
    return {
        "service": "face-pipeline ops-api",
        "docs": "/docs",
        "endpoints": list(ENDPOINTS),
        "local_mode": local_mode(),
    }


@router.get("/ready", summary="Readiness of models, storage, vector DB, queue and dedup cache (503 if not)")
def ready(settings: AppSettings, backend: Backend, probe: Readiness) -> JSONResponse:
    report = probe.run()
    for name, state in report.checks.items():
        metrics.READY.labels(check=name).set(1 if state == "healthy" else 0)
    body = report.to_json()
    loaded = backend.models_loaded
    body["provider"] = loaded.provider if loaded else None
    body["model_pack"] = settings.model_pack
    return JSONResponse(body, status_code=200 if report.ready else 503)


@router.get("/stats", summary="Cluster-wide counters and timings, dedup stats and stream depth")
def stats(backend: Backend, tenant_id: Annotated[str | None, Query()] = None) -> dict[str, Any]:
    body: dict[str, Any] = backend.stats.snapshot(checked_tenant(tenant_id) if tenant_id else None)
    if tenant_id:
        body["tenant_id"] = tenant_id
    body["dedup_stats"] = dedup_stats(backend)
    body["streams"] = {d.stream: d.to_json() for d in update_stream_gauges(backend)}
    return body


@router.get("/metrics", summary="Prometheus metrics, including stream length, lag and pending")
def prometheus(backend: Backend) -> Response:
    try:
        update_stream_gauges(backend)
        update_dedup_gauges(backend)
    except (redis.RedisError, TransientError) as exc:
        # Still serve what this process knows (readiness, its own counters): a failed scrape
        # would read as the ops-api being down. The Redis figures go, so that no autoscaler
        # acts on a backlog that is no longer measured.
        log.warning("/metrics without the stream and dedup figures: Redis unavailable: %s", exc)
        clear_redis_gauges()
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
