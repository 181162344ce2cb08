"""How a failure is handled: permanent (dead-letter at once), transient (retry), or a crash.

- :class:`PermanentError` — the message itself is bad (bad JSON, missing fields, an
  image that does not decode, an object that does not exist). Retrying cannot help:
  the worker moves it to ``<stream>:dlq`` at once, with ``reason``.
- transient — a dependency is down or overloaded (Redis, S3, Qdrant, the network).
  The worker retries the batch in-process with backoff and never dead-letters it
  for that. Raise :class:`TransientError`, or let a library's own connection error
  through: :func:`is_transient` recognises them.
- anything else is a crash of this delivery: the entry stays pending, is reclaimed
  later, and becomes a poison pill after ``MAX_DELIVERIES``.

The client libraries (minio, qdrant-client, urllib3) are looked up in ``sys.modules``
rather than imported: an exception of a library that was never imported cannot
exist, and workers that do not need qdrant-client do not pay for importing it.
"""

from __future__ import annotations

import errno
import socket
import sys

import redis.exceptions

# errno values of a socket whose peer is unreachable or went away; other OSErrors
# (file not found, permission denied) are not transient.
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTDOWN,
        errno.EAGAIN,
    }
)
# S3 error codes that mean "try again later" even when the status is not 5xx.
_TRANSIENT_S3_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout"})
_REDIS_TRANSIENT = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError (replica/AOF still loading)
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,  # writing to a replica during a failover
    # A Redis Cluster between a master's death and its replica's promotion: no node serves the
    # slot yet (CLUSTERDOWN, MASTERDOWN), or the client cannot rebuild its slot map meanwhile.
    redis.exceptions.ClusterDownError,
    redis.exceptions.RedisClusterException,
)


class PermanentError(Exception):
    """The message cannot be processed, ever: dead-letter it with ``reason``.

    ``reason`` is a short machine-readable slug (``invalid_json``, ``missing_fields``,
    ``object_not_found``...) stored in the DLQ entry; ``message`` says what was wrong.
    ``fields`` names the offending message fields, when there are some.
    """

    def __init__(self, reason: str, message: str = "", *, fields: tuple[str, ...] = ()) -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason
        self.fields = tuple(fields)

    def __reduce__(self) -> tuple:  # picklable across process pools despite the keyword argument
        return (_rebuild_permanent, (type(self), self.reason, self.message, self.fields))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"


def _rebuild_permanent(
    cls: type[PermanentError], reason: str, message: str, fields: tuple[str, ...]
) -> PermanentError:
    return cls(reason, message, fields=fields)


class TransientError(Exception):
    """A dependency failed in a way that should pass: retry with backoff, never dead-letter."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised ``from``) means "retry later".

    A :class:`PermanentError` is never transient, even when raised from a connection error.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PermanentError):
            return False
        if _is_transient_one(current):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def _is_transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (TransientError, *_REDIS_TRANSIENT)):
        return True
    if _is_transient_socket_error(exc):
        return True
    return (
        _is_transient_urllib3(exc)
        or _is_transient_minio(exc)
        or _is_transient_qdrant(exc)
        or (_is_transient_httpx(exc))
    )


def _is_transient_socket_error(exc: BaseException) -> bool:
    # ConnectionError and TimeoutError (= socket.timeout) are OSError subclasses that are
    # always network-ish; gaierror is a DNS lookup failing, usually while a Service comes up.
    if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
        return True
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS


def _is_transient_urllib3(exc: BaseException) -> bool:
    exceptions = sys.modules.get("urllib3.exceptions")
    if exceptions is None:
        return False
    # MaxRetryError: urllib3 gave up reaching the server (minio raises it when S3 is down).
    transient = (
        exceptions.MaxRetryError,
        exceptions.NewConnectionError,
        exceptions.ProtocolError,
        exceptions.TimeoutError,
        exceptions.ProxyError,
    )
    return isinstance(exc, transient)


def _is_transient_minio(exc: BaseException) -> bool:
    error = sys.modules.get("minio.error")
    if error is None:
        return False
    if isinstance(exc, error.ServerError):
        return exc.status_code >= 500
    if isinstance(exc, error.InvalidResponseError):  # non-XML answer, e.g. a proxy's 502 page
        return getattr(exc, "_code", 0) >= 500
    if isinstance(exc, error.S3Error):
        status = getattr(exc.response, "status", 0) or 0
        return status >= 500 or exc.code in _TRANSIENT_S3_CODES
    return False


def _is_transient_qdrant(exc: BaseException) -> bool:
    exceptions = sys.modules.get("qdrant_client.http.exceptions")
    if exceptions is None:
        return False
    if isinstance(exc, exceptions.ResponseHandlingException):  # the HTTP call itself failed
        return True
    if isinstance(exc, exceptions.UnexpectedResponse):
        return exc.status_code is not None and (exc.status_code >= 500 or exc.status_code == 429)
    return False


def _is_transient_httpx(exc: BaseException) -> bool:
    httpx = sys.modules.get("httpx")
    return httpx is not None and isinstance(exc, httpx.TransportError)
