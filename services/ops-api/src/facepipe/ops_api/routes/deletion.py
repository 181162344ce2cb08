"""GDPR deletion: one image of a tenant (DELETE /images/...), or a whole tenant (DELETE /tenants/...)."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from facepipe.ops_api.api_errors import ApiProblem
from facepipe.ops_api.dependencies import AppSettings, Backend, checked_tenant, require_token

SHA_PATTERN = re.compile(r"^[0-9A-Za-z_-]{1,128}$")

TenantQuery = Annotated[str, Query(description="tenant whose data the call touches", min_length=1)]

# Every route here changes data: the bearer token (when OPS_API_TOKEN is set) guards them all.
router = APIRouter(dependencies=[Depends(require_token)])


@router.delete("/images/{image_sha256}", summary="Delete one image's faces, artifacts and dedup entries")
def delete_image(
    settings: AppSettings, backend: Backend, image_sha256: str, tenant_id: TenantQuery
) -> dict[str, Any]:
    from facepipe.store import deletion  # imports the vector store client: only when deleting

    tenant = checked_tenant(tenant_id)
    if not SHA_PATTERN.match(image_sha256):
        raise ApiProblem(400, "invalid_image_sha256", f"{image_sha256!r} is not an image id")
    report = deletion.delete_image(
        settings, tenant, image_sha256, redis_client=backend.redis, store=backend.store, index=backend.index
    )
    return asdict(report)


@router.delete("/tenants/{tenant_id}", summary="Delete everything of one tenant (GDPR)")
def delete_tenant(settings: AppSettings, backend: Backend, tenant_id: str) -> dict[str, Any]:
    from facepipe.store import deletion  # imports the vector store client: only when deleting

    tenant = checked_tenant(tenant_id)
    report = deletion.delete_tenant(
        settings, tenant, redis_client=backend.redis, store=backend.store, index=backend.index
    )
    return asdict(report)
