"""POST /search: the faces of one tenant similar to the faces of an uploaded image."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile

from facepipe.core.errors import PermanentError
from facepipe.ops_api.api_errors import ApiProblem
from facepipe.ops_api.dependencies import AppSettings, Backend, checked_tenant
from facepipe.ops_api.search import MAX_TOP_K, search_image

router = APIRouter()


@router.post("/search", summary="Faces of one tenant similar to the faces in an uploaded image")
def search(
    settings: AppSettings,
    backend: Backend,
    image: Annotated[UploadFile, File(description="JPEG, PNG or WebP, at most MAX_UPLOAD_BYTES")],
    tenant_id: Annotated[str, Form(description="only this tenant's faces are searched")],
    top_k: Annotated[int, Form(ge=1, le=MAX_TOP_K)] = 10,
    site: Annotated[str | None, Form(description="only faces from this site")] = None,
) -> dict[str, Any]:
    tenant = checked_tenant(tenant_id)
    data = _read_upload(image, settings.max_upload_bytes)
    try:
        return search_image(settings, backend.models, backend.index, data, tenant, top_k, site or None)
    except PermanentError as exc:
        raise _upload_problem(image.filename or "upload", exc) from None


def _read_upload(image: UploadFile, max_bytes: int) -> bytes:
    data = image.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiProblem(
            413,
            "payload_too_large",
            f"image is over the upload limit of {max_bytes} bytes (MAX_UPLOAD_BYTES)",
        )
    if not data:
        raise ApiProblem(400, "empty_upload", "the uploaded image is empty")
    return data


def _upload_problem(name: str, exc: PermanentError) -> ApiProblem:
    if exc.reason in {"image_too_large", "too_many_pixels"}:
        return ApiProblem(413, exc.reason, f"{name}: {exc.message}")
    if exc.reason in {"not_an_image", "corrupt_image"}:
        # Pillow's own wording names internal objects; say what the user needs to know.
        return ApiProblem(415, exc.reason, f"{name} is not a readable image: upload a JPEG, PNG or WebP file")
    if exc.reason == "unsupported_image_format":
        return ApiProblem(415, exc.reason, f"{name}: {exc.message}")
    return ApiProblem(400, exc.reason, f"{name}: {exc.message}")
