"""Deleting an image's (or a tenant's) entries from the pipeline streams and their DLQs.

Workers trim what they finished, but entries still waiting, those kept by STREAM_RETENTION_MS
and every dead letter carry the image: its id, and in the later streams its crops and
embeddings. A deletion removes them (``XDEL``) so that no byte of the image is left in Redis.

An entry a worker is processing at this very moment cannot be taken back: its outputs may still
be written after the deletion. Delete again once the streams are drained to be sure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import redis

from facepipe.core.settings import dlq_stream

PAGE = 500
PAYLOAD_FIELDS = ("message", "data", "payload")  # stream entries; DLQ entries keep the original


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _entries(client: redis.Redis, stream: str) -> Iterator[tuple[str, dict[str, str]]]:
    start = "-"
    while True:
        page = client.xrange(stream, min=start, count=PAGE)
        for entry_id, fields in page:
            yield _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
        if len(page) < PAGE:
            return
        start = "(" + _text(page[-1][0])


def _about(fields: dict[str, str]) -> tuple[str | None, str | None, str]:
    """(tenant, image) the entry is about, and its payload text ('' if it has none)."""
    raw = next((fields[name] for name in PAYLOAD_FIELDS if name in fields), "")
    try:
        payload: Any = json.loads(raw)
    except (ValueError, TypeError):
        return None, None, raw
    if not isinstance(payload, dict):
        return None, None, raw
    ingest = payload.get("ingest") if isinstance(payload.get("ingest"), dict) else payload
    tenant, image = ingest.get("tenant_id"), ingest.get("image_sha256")
    return (tenant if isinstance(tenant, str) else None), (image if isinstance(image, str) else None), raw


def _matches(fields: dict[str, str], tenant: str, image_sha256: str | None) -> bool:
    entry_tenant, entry_image, raw = _about(fields)
    if entry_tenant is None:
        # A payload that is not the JSON it should be (a dead letter of a malformed message):
        # for an image, anything that names both the image and the tenant goes.
        return image_sha256 is not None and image_sha256 in raw and tenant in raw
    return entry_tenant == tenant and (image_sha256 is None or entry_image == image_sha256)


def delete_entries(
    client: redis.Redis, streams: list[str], tenant: str, image_sha256: str | None = None
) -> int:
    """XDEL every entry about one image of ``tenant`` (or all of the tenant's) from ``streams``
    and their DLQs; returns how many were deleted."""
    deleted = 0
    for name in [name for pipeline in streams for name in (pipeline, dlq_stream(pipeline))]:
        if not client.exists(name):
            continue
        doomed = [entry_id for entry_id, fields in _entries(client, name)
                  if _matches(fields, tenant, image_sha256)]
        for start in range(0, len(doomed), PAGE):
            deleted += int(client.xdel(name, *doomed[start:start + PAGE]))
    return deleted
