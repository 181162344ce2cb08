"""Tenant ids: the one check every key, object path and filter that holds a tenant goes through.

A valid id is 1-63 characters of ``A-Z a-z 0-9 _ . -``, starts with a letter or digit
and never contains ``..``. So ``a:b`` (Redis key separator), ``../x`` (path escape),
``*`` (glob) and ``a/b`` can never leave a tenant's prefix.

:func:`tenant_stream_name` is the one derivation of a tenant's own ingest stream,
shared by the operator, the tenant chart's tests and ``facepipe ingest --tenant-stream``.
"""

from __future__ import annotations

import re

from facepipe.core.errors import PermanentError

TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def is_valid_tenant_id(tenant: object) -> bool:
    return isinstance(tenant, str) and TENANT_ID_PATTERN.fullmatch(tenant) is not None and ".." not in tenant


def validate_tenant_id(tenant: object) -> str:
    """Return ``tenant`` unchanged when valid, else raise ``PermanentError("invalid_tenant_id")``."""
    if not is_valid_tenant_id(tenant):
        raise PermanentError(
            "invalid_tenant_id",
            f"tenant_id {tenant!r} is invalid: 1-63 characters of A-Z a-z 0-9 _ . -, "
            "starting with a letter or digit, without '..'",
            fields=("tenant_id",),
        )
    assert isinstance(tenant, str)
    return tenant


# The runbook's ingest stream; a tenant installed by the operator gets its own below it.
DEFAULT_STREAM_NAME = "face-processing-queue"


def tenant_stream_name(tenant: str, base: str = DEFAULT_STREAM_NAME) -> str:
    """The ingest stream of one tenant's own pipeline: ``<base>:{<tenant>}``.

    Tenants sharing one Redis then never share a stream, a consumer group or a DLQ.
    The braces are a Redis Cluster hash tag: the derived ``...:detected``,
    ``...:embedded`` and ``...:dlq`` streams keep it, so one tenant's streams hash to
    one slot (and a MULTI over them stays within it).
    """
    return f"{base}:{{{validate_tenant_id(tenant)}}}"
