"""Model-pack migrations of one tenant: where it stands (GET) and a backfill run inside this process (POST).

``POST /migrations/{tenant_id}`` exists for the local stack: there the embedded vector store
admits one process, this one, so ``facepipe reembed`` asks it to run the backfill here (the
same code the operator's Job runs) and follows ``GET`` for its progress bar. With a Qdrant
server the backfill may run anywhere (``python -m facepipe.ops_api.reembed``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from facepipe.core.packs import PACKS
from facepipe.ops_api.api_errors import ApiProblem
from facepipe.ops_api.dependencies import AppSettings, Backend, checked_tenant, require_token
from facepipe.ops_api.reembed.backfill import Reembedder
from facepipe.ops_api.reembed.options import DEFAULT_RETAIN_HOURS, SETTLE_S, ReembedOptions
from facepipe.store.pack_migration import MigrationRecords

log = logging.getLogger("facepipe.reembed")
router = APIRouter()


class BackgroundRuns:
    """Backfill runs in threads of this process, at most one per tenant; the last failure of each."""

    def __init__(self) -> None:
        self._threads: dict[str, threading.Thread] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, tenant: str, work: Callable[[], object]) -> bool:
        """Run ``work`` in a thread; False when a run of this tenant is still going."""

        def body() -> None:
            try:
                work()
            except Exception as exc:  # reported by GET; the record in Redis says it too
                log.exception("backfill of tenant %s failed", tenant)
                with self._lock:
                    self._errors[tenant] = f"{type(exc).__name__}: {exc}"

        with self._lock:
            if self.running(tenant):
                return False
            self._errors.pop(tenant, None)
            thread = threading.Thread(target=body, name=f"reembed-{tenant}", daemon=True)
            self._threads[tenant] = thread
            thread.start()
            return True

    def running(self, tenant: str) -> bool:
        thread = self._threads.get(tenant)
        return thread is not None and thread.is_alive()

    def error(self, tenant: str) -> str | None:
        return self._errors.get(tenant)


def background_runs(request: Request) -> BackgroundRuns:
    state = request.app.state
    if getattr(state, "migration_runs", None) is None:
        state.migration_runs = BackgroundRuns()
    return state.migration_runs


Runs = Annotated[BackgroundRuns, Depends(background_runs)]


class MigrationRequest(BaseModel):
    pack: str = Field(description="the model pack the tenant is to search with")
    max_faces_per_s: float = Field(0.0, ge=0, description="embedding rate limit; 0: none")
    retain_hours: float = Field(DEFAULT_RETAIN_HOURS, ge=0, description="keep the old pack's faces so long")
    settle_s: float = Field(SETTLE_S, ge=0, description="wait after the switch before the last catch-up")
    batch: int = Field(32, ge=1, le=1024, description="faces per inference call")


@router.get("/migrations/{tenant_id}", summary="The tenant's model pack and its migration's progress")
def migration(backend: Backend, tenant_id: str, runs: Runs) -> dict[str, Any]:
    tenant = checked_tenant(tenant_id)
    route = backend.index.route(tenant)
    record = MigrationRecords(backend.redis, backend.index.base).load(tenant)
    return {
        "tenant_id": tenant,
        "collection": route.collection,
        "pack": route.pack.name if route.pack is not None else None,
        "record": record.as_json() if record is not None else None,
        "running_here": runs.running(tenant),
        "error_here": runs.error(tenant),
    }


@router.post(
    "/migrations/{tenant_id}",
    status_code=202,
    summary="Start a backfill run in this process (local mode)",
    dependencies=[Depends(require_token)],
)
def start_migration(
    settings: AppSettings,
    backend: Backend,
    tenant_id: str,
    body: MigrationRequest,
    runs: Runs,
) -> dict[str, Any]:
    tenant = checked_tenant(tenant_id)
    if body.pack not in PACKS:
        raise ApiProblem(400, "unknown_pack", f"unknown model pack {body.pack!r}; known: {', '.join(PACKS)}")
    options = ReembedOptions(
        batch=body.batch,
        max_faces_per_s=body.max_faces_per_s,
        retain_hours=body.retain_hours,
        settle_s=body.settle_s,
    )

    def work() -> None:
        models = backend.models_for(body.pack)  # the search's loaded recognizer of that pack
        Reembedder(
            settings,
            tenant,
            body.pack,
            index=backend.index,
            store=backend.store,
            redis_client=backend.redis,
            options=options,
            embedder=models.embedder,
        ).run()

    if not runs.start(tenant, work):
        raise ApiProblem(409, "migration_running", f"a backfill of tenant {tenant} runs in this process")
    return {"tenant_id": tenant, "pack": body.pack, "started": True}


@router.post(
    "/migrations/{tenant_id}/cleanup",
    summary="Remove the tenant's faces kept for rollback in old packs' collections now",
    dependencies=[Depends(require_token)],
)
def clean_up(settings: AppSettings, backend: Backend, tenant_id: str, runs: Runs) -> dict[str, Any]:
    tenant = checked_tenant(tenant_id)
    if runs.running(tenant):
        raise ApiProblem(409, "migration_running", f"a backfill of tenant {tenant} runs in this process")
    reembedder = Reembedder(
        settings,
        tenant,
        settings.model_pack,
        index=backend.index,
        store=backend.store,
        redis_client=backend.redis,
        options=ReembedOptions(lock_wait_s=0.0),
    )
    try:
        removed = reembedder.clean_up()
    except RuntimeError as exc:  # a migration is unfinished, or another run holds the tenant
        raise ApiProblem(409, "migration_running", str(exc)) from None
    return {"tenant_id": tenant, "removed_from": [kept.collection for kept in removed]}
