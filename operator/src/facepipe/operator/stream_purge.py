"""The tenant's entries in the pipeline streams and their DLQs, deleted by deletionPolicy Purge.

Stream entries carry the tenant's data too (crops inline in detected/embedded messages,
the original payload in DLQ entries). A pipeline on its own streams (the per-tenant
default ``face-processing-queue:{<tenant>}``) loses them whole: the streams, their DLQs and
their consumer groups. A pipeline on explicitly named streams may share them with
producers of other tenants, so only the entries that name the tenant are deleted there.

Runs after the tenant's pods are gone, so nothing reads or writes these streams meanwhile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import redis

from facepipe.core.settings import dlq_stream

SCAN_BATCH = 500


@dataclass(frozen=True)
class StreamPurgeReport:
    streams_deleted: int  # whole streams (with their groups) removed
    entries_deleted: int  # entries of the tenant removed from shared streams


def _tenant_of(payload_text: str) -> str | None:
    """tenant_id of a stream message: ingest messages carry it, later stages under ``ingest``."""
    try:
        payload = json.loads(payload_text)
    except (TypeError, ValueError):
        return None
    if not isinstance(payload, dict):
        return None
    ingest = payload.get("ingest")
    tenant = ingest.get("tenant_id") if isinstance(ingest, dict) else payload.get("tenant_id")
    return tenant if isinstance(tenant, str) else None


def entry_tenant(fields: Mapping[str, str]) -> str | None:
    """The tenant of an entry: a pipeline message (``message``/``data``) or a DLQ entry (``payload``)."""
    for name in ("message", "data", "payload"):
        if name in fields:
            return _tenant_of(fields[name])
    return None


def _delete_tenant_entries(client: redis.Redis, stream: str, tenant: str) -> int:
    deleted = 0
    start = "-"
    while True:
        batch = client.xrange(stream, min=start, max="+", count=SCAN_BATCH)
        if not batch:
            return deleted
        ids = [entry_id for entry_id, fields in batch if entry_tenant(fields) == tenant]
        if ids:
            deleted += int(client.xdel(stream, *ids))
        if len(batch) < SCAN_BATCH:
            return deleted
        start = f"({batch[-1][0]}"


def purge_streams(redis_url: str, streams: Iterable[str], tenant: str, *, whole: bool) -> StreamPurgeReport:
    """Delete the tenant's stream data: the streams themselves (``whole``) or its entries in them."""
    names = [name for stream in streams for name in (stream, dlq_stream(stream))]
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=30)
    try:
        if whole:
            return StreamPurgeReport(streams_deleted=int(client.delete(*names)), entries_deleted=0)
        return StreamPurgeReport(0, sum(_delete_tenant_entries(client, name, tenant) for name in names))
    finally:
        client.close()
