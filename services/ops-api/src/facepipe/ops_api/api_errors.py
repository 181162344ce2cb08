"""Every error the ops-api returns is JSON: ``{"error": slug, "message": sentence, "status": code}``
(plus ``dependency`` — ``redis``, ``s3`` or ``vector_store`` — when one failed: 503
``dependency_unavailable`` while it is down).

Routes raise :class:`ApiProblem`; :data:`EXCEPTION_HANDLERS` maps each exception type the app
answers to the function that turns it into that JSON (one place to change how errors look).
Also the upload-size guard (an ASGI middleware, so an oversize body is refused
before it is read into memory or spooled to disk) and the bearer-token check of
mutating endpoints.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facepipe.core.errors import TransientError, is_transient

log = logging.getLogger("facepipe.ops_api")

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


class ApiProblem(Exception):
    """Raise from a route to answer ``status`` with a JSON error body (the ops-api's HTTP error;
    not to be confused with the operator's error of the Kubernetes API)."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers


def error_body(status: int, error: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": error, "message": message, "status": status, **extra}


def error_response(
    status: int, error: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The JSON answer of every error: routes, validation, unknown paths, oversize bodies."""
    return JSONResponse(error_body(status, error, message, **extra), status, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p not in {"body", "query", "path", "header", "form"}]
        field = ".".join(loc) or "request"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


async def _problem(_request: Request, exc: ApiProblem) -> Response:
    return error_response(exc.status, exc.error, exc.message, exc.headers)


async def _invalid_request(_request: Request, exc: RequestValidationError) -> Response:
    errors = list(exc.errors())
    details = [
        {"field": ".".join(str(p) for p in e.get("loc", ())), "problem": str(e.get("msg"))} for e in errors
    ]
    return error_response(422, "invalid_request", _describe_validation(errors), details=details)


async def _http_exception(_request: Request, exc: StarletteHTTPException) -> Response:
    slug = _STATUS_SLUGS.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    return error_response(exc.status_code, slug, message, getattr(exc, "headers", None))


# The dependencies the ops-api calls, by the top-level module of the client library whose
# exception (or an exception it caused) reached the app.
DEPENDENCIES = {"redis": "redis", "minio": "s3", "urllib3": "s3", "qdrant_client": "vector_store",
                "httpx": "vector_store"}
DEPENDENCY_NAMES = {"redis": "Redis", "s3": "S3", "vector_store": "the vector store"}
RETRY_AFTER_S = "5"


def failing_dependency(exc: BaseException) -> str | None:
    """``redis``, ``s3`` or ``vector_store``: the dependency an exception comes from (through its
    causes), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        dependency = DEPENDENCIES.get(type(current).__module__.split(".")[0])
        if dependency is not None:
            return dependency
        current = current.__cause__ or current.__context__
    return None


async def _dependency_error(_request: Request, exc: Exception) -> Response:
    """A dependency failed: 503 ``dependency_unavailable`` naming it when it is down or overloaded
    (worth retrying: ``Retry-After``), else 500 ``dependency_error``."""
    dependency = failing_dependency(exc) or "unknown"
    name = DEPENDENCY_NAMES.get(dependency, "a dependency")
    if is_transient(exc):
        log.warning("%s unavailable: %s", name, exc)
        return error_response(
            503,
            "dependency_unavailable",
            f"{name} is unavailable, try again shortly: {exc}",
            {"Retry-After": RETRY_AFTER_S},
            dependency=dependency,
        )
    log.error("%s refused the request: %s", name, exc)
    message = f"{name} refused the request: {exc}"
    return error_response(500, "dependency_error", message, dependency=dependency)


async def _unexpected(_request: Request, exc: Exception) -> Response:
    """Anything else: a bug. JSON like every other error; the traceback goes to the log."""
    log.error("unexpected error", exc_info=exc)
    dependency = failing_dependency(exc)
    extra = {"dependency": dependency} if dependency else {}
    return error_response(
        500, "internal_error", f"unexpected {type(exc).__name__}; see the ops-api log", **extra
    )


# Each handler takes the exception type it is registered for.
ExceptionHandler = Callable[[Request, Any], Awaitable[Response]]

# Which exception becomes which JSON error: every error the ops-api answers is JSON with a
# stable ``error`` code. Dependency failures are answered where they are raised (Redis's own
# errors; S3 and vector store failures arrive as TransientError, see storage and vectors);
# ``Exception`` is the last resort (Starlette re-raises it afterwards, so the server logs it).
EXCEPTION_HANDLERS: dict[type[Exception], ExceptionHandler] = {
    ApiProblem: _problem,
    RequestValidationError: _invalid_request,
    StarletteHTTPException: _http_exception,
    redis.exceptions.RedisError: _dependency_error,
    TransientError: _dependency_error,
    Exception: _unexpected,
}


def install_error_handlers(app: FastAPI) -> None:
    for exc_type, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)


def check_bearer_token(expected: str, authorization: str | None) -> None:
    """No-op when OPS_API_TOKEN is unset; else 401 without a bearer token, 403 with a wrong one."""
    if not expected:
        return
    challenge = {"WWW-Authenticate": 'Bearer realm="facepipe-ops-api"'}
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiProblem(
            401, "unauthorized", "this endpoint needs 'Authorization: Bearer <OPS_API_TOKEN>'", challenge
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise ApiProblem(403, "forbidden", "the bearer token does not match OPS_API_TOKEN", challenge)


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
        return error_response(413, "payload_too_large", message)

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
