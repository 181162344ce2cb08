"""The ops-api: readiness, stats, metrics, face search, DLQ tools and GDPR deletion.

``create_app(settings, backend)`` builds the FastAPI app; ``python -m facepipe.ops_api``
serves it (see ``__main__``). Routes live in ``routes/`` (one router per concern) and get
the backend, settings and readiness probe from ``app.state`` through ``dependencies``.
Every error is JSON ``{"error", "message", "status"}`` (``api_errors``); mutating endpoints
need ``Authorization: Bearer <OPS_API_TOKEN>`` when that is set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from facepipe.core.settings import Settings, get_settings
from facepipe.ops_api.api_errors import BodySizeLimit, install_error_handlers
from facepipe.ops_api.backend import OpsBackend
from facepipe.ops_api.readiness import ReadinessProbe, backend_probe
from facepipe.ops_api.routes import ROUTERS

log = logging.getLogger("facepipe.ops_api")


def create_app(
    settings: Settings | None = None, backend: OpsBackend | None = None, warm_models: bool = True
) -> FastAPI:
    settings = settings or get_settings()
    backend = backend or OpsBackend(settings)
    probe = backend_probe(backend)
    app = FastAPI(
        title="face-pipeline ops-api",
        version="0.1.0",
        description="Readiness, stats, metrics, tenant-scoped face search, DLQ tools and GDPR deletion. "
        "Mutating endpoints need `Authorization: Bearer <OPS_API_TOKEN>` when it is set.",
        lifespan=_lifespan(backend, probe, warm_models),
        # No 307 from "/tenants/0%2F" to "/tenants/0": a client following it would purge another tenant.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.backend = backend
    app.state.readiness = probe
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _lifespan(
    backend: OpsBackend, probe: ReadinessProbe, warm_models: bool
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm_models:
            # Load the models in the background: /ready reports them healthy as soon as they are.
            threading.Thread(target=_warm, args=(backend,), name="warm-models", daemon=True).start()
        yield
        probe.close()
        backend.close()

    return lifespan


def _warm(backend: OpsBackend) -> None:
    try:
        backend.models  # noqa: B018
    except Exception as exc:  # reported by /ready; the API keeps serving the rest
        log.error("could not load the face models: %s", exc)
