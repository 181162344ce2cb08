"""Every error the ops-api returns is JSON: ``{"error": slug, "message": sentence, "status": code}``.

Also the upload-size guard (an ASGI middleware, so an oversize body is refused
before it is read into memory or spooled to disk) and the bearer-token check of
mutating endpoints.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for the multipart framing and the small form fields around the file itself;
# the file's own size is checked exactly against MAX_UPLOAD_BYTES by the endpoint.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

_STATUS_SLUGS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """Raise from an endpoint to answer ``status`` with a JSON error body."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers


def error_body(status: int, error: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, "message": message, "status": status, **extra}


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in {"body", "query", "path", "header", "form"}]
        field = ".".join(loc) or "request"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.status, exc.error, exc.message), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "problem": str(e.get("msg"))}
            for e in errors
        ]
        body = error_body(422, "invalid_request", _describe_validation(errors), details=details)
        return JSONResponse(body, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        slug = _STATUS_SLUGS.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        return JSONResponse(
            error_body(exc.status_code, slug, message), exc.status_code, headers=getattr(exc, "headers", None)
        )


def check_bearer_token(expected: str, authorization: str | None) -> None:
    """No-op when OPS_API_TOKEN is unset; else 401 without a bearer token, 403 with a wrong one."""
    if not expected:
        return
    challenge = {"WWW-Authenticate": 'Bearer realm="facepipe-ops-api"'}
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401, "unauthorized", "this endpoint needs 'Authorization: Bearer <OPS_API_TOKEN>'", challenge
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiError(403, "forbidden", "the bearer token does not match OPS_API_TOKEN", challenge)


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` (+ multipart framing) with 413, without reading them all.

    A declared Content-Length over the limit is refused at once. A chunked body is
    counted as it arrives; past the limit the app sees the body end there (its parse
    fails) and whatever it answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit = max_bytes + MULTIPART_OVERHEAD_BYTES

    def _too_large(self, size: str) -> JSONResponse:
        message = (
            f"request body of {size} is over the upload limit of {self.max_bytes} bytes (MAX_UPLOAD_BYTES)"
        )
        return JSONResponse(error_body(413, "payload_too_large", message), 413)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(f"{int(declared)} bytes")(scope, receive, send)
            return
        received = 0
        exceeded = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    exceeded = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: Message) -> None:
            if not exceeded:
                await send(message)
            elif message["type"] == "http.response.start":
                await self._too_large(f"more than {self.limit} bytes")(scope, receive, send)
            # else: the body of the app's own answer, replaced by the 413 above

        await self.app(scope, counting_receive, guarded_send)
