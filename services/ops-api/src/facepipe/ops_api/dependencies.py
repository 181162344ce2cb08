"""What routes are given: the app's settings, backend and readiness probe (stored on ``app.state``
by ``create_app``), the bearer-token guard of mutating routes, and tenant id checking."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from facepipe.core.settings import Settings
from facepipe.core.tenancy import is_valid_tenant_id
from facepipe.ops_api.api_errors import ApiProblem, check_bearer_token
from facepipe.ops_api.backend import OpsBackend
from facepipe.ops_api.readiness import ReadinessProbe


# async: each only reads app.state, so it runs on the event loop instead of a worker thread.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_backend(request: Request) -> OpsBackend:
    return request.app.state.backend


async def get_readiness(request: Request) -> ReadinessProbe:
    return request.app.state.readiness


AppSettings = Annotated[Settings, Depends(get_settings)]
Backend = Annotated[OpsBackend, Depends(get_backend)]
Readiness = Annotated[ReadinessProbe, Depends(get_readiness)]


async def require_token(settings: AppSettings, authorization: Annotated[str | None, Header()] = None) -> None:
    check_bearer_token(settings.ops_api_token, authorization)


def checked_tenant(tenant_id: str) -> str:
    """``tenant_id`` when it is a valid tenant id; else a 400 that says what a valid one is."""
    if not is_valid_tenant_id(tenant_id):
        raise ApiProblem(
            400,
            "invalid_tenant_id",
            f"tenant_id {tenant_id!r} is invalid: 1-63 characters of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit, without '..'",
        )
    return tenant_id
