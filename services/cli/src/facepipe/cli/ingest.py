"""``facepipe ingest``: what a crawler does, from a folder of photos.

For each image: read it, check it decodes (JPEG/PNG/WebP, within the size
limits), upload it to the raw bucket under a key derived from its sha256
(``<tenant>/<sha[:2]>/<sha>/original.<ext>``; the same photo is stored once per
tenant), and publish the Phase 3 ingest message. With ``wait``, watch the
pipeline drain and report what happened to these images.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from facepipe.core.errors import PermanentError
from facepipe.core.messages import IngestMessage, parse_message
from facepipe.core.settings import Settings, dlq_stream
from facepipe.core.stats import Stats
from facepipe.core.tenancy import tenant_stream_name, validate_tenant_id
from facepipe.ops_api.depth import pipeline_depths, work_outstanding
from facepipe.store.storage import ObjectStore, image_prefix
from facepipe.vision.imaging import ImageLimits, decode_image, phash64

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
UPLOAD_THREADS = 4


class IngestError(RuntimeError):
    pass


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Files given explicitly, plus every image (by suffix) under the folders given, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise IngestError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def raw_key(tenant_id: str, sha256: str, suffix: str) -> str:
    ext = suffix.lower() if suffix.lower() in IMAGE_SUFFIXES else ".bin"
    return f"{image_prefix(tenant_id, sha256)}original{ext}"


@dataclass
class Published:
    path: Path
    sha256: str
    message_id: str
    uploaded: bool  # False when the object was already in the bucket


@dataclass
class Skipped:
    path: Path
    reason: str


@dataclass
class IngestResult:
    tenant_id: str
    published: list[Published] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def with_ingest_stream(
    settings: Settings, tenant_id: str, stream: str | None = None, tenant_stream: bool = False
) -> Settings:
    """Settings publishing to ``stream``, or to the tenant's own stream (facepipe.core.tenancy)."""
    if tenant_stream:
        stream = tenant_stream_name(tenant_id)
    return settings.model_copy(update={"redis_stream_name": stream}) if stream else settings


def build_message(settings: Settings, tenant_id: str, site: str, path: Path, data: bytes) -> tuple[str, dict]:
    """(sha256, Phase 3 ingest payload) for one image; raises PermanentError when it is not a usable image."""
    tenant_id = validate_tenant_id(tenant_id)
    image = decode_image(data, ImageLimits.from_settings(settings))
    sha = hashlib.sha256(data).hexdigest()
    message = parse_message(
        IngestMessage,
        {
            "image_sha256": sha,
            "bucket": settings.bucket_raw,
            "key": raw_key(tenant_id, sha, path.suffix),
            "tenant_id": tenant_id,
            "site": site,
            "url": path.resolve().as_uri(),
            "image_phash": phash64(image),
            "face_hints": None,
        },
    )
    return sha, message.model_dump(mode="json")


def publish(client: redis.Redis, stream: str, payload: dict) -> str:
    entry_id = client.xadd(stream, {"message": json.dumps(payload, separators=(",", ":"))})
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def ingest_paths(
    settings: Settings,
    client: redis.Redis,
    store: ObjectStore,
    files: list[Path],
    tenant_id: str,
    site: str = "local",
    on_done: Callable[[Path], None] | None = None,
) -> IngestResult:
    tenant_id = validate_tenant_id(tenant_id)
    store.ensure_buckets()
    result = IngestResult(tenant_id)

    def one(path: Path) -> Published | Skipped:
        try:
            data = path.read_bytes()
            sha, payload = build_message(settings, tenant_id, site, path, data)
        except PermanentError as exc:
            return Skipped(path, exc.message)
        except OSError as exc:
            return Skipped(path, f"cannot read: {exc.strerror or exc}")
        uploaded = False
        if not store.exists(payload["bucket"], payload["key"]):
            store.put_bytes(
                payload["bucket"],
                payload["key"],
                data,
                _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream"),
            )
            uploaded = True
        # Published only after the object is durably stored: a worker never sees a message
        # whose image is not there yet.
        return Published(path, sha, publish(client, settings.ingest_stream, payload), uploaded)

    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        for outcome in pool.map(one, files):
            if isinstance(outcome, Published):
                result.published.append(outcome)
            else:
                result.skipped.append(outcome)
            if on_done is not None:
                on_done(outcome.path)
    return result


# --- waiting for the pipeline ------------------------------------------------------------


@dataclass
class Baseline:
    """What the counters and DLQs looked like before this ingest published anything."""

    counters: dict[str, int]
    dlq_last_ids: dict[str, str]


def take_baseline(settings: Settings, client: redis.Redis, tenant_id: str) -> Baseline:
    counters = Stats(client).snapshot(tenant_id)["counters"]
    last_ids = {}
    for stream in settings.pipeline_streams:
        rows = client.xrevrange(dlq_stream(stream), count=1)
        last_ids[stream] = (
            (rows[0][0].decode() if isinstance(rows[0][0], bytes) else rows[0][0]) if rows else "0-0"
        )
    return Baseline(counters, last_ids)


def outstanding(settings: Settings, client: redis.Redis) -> int:
    return work_outstanding(pipeline_depths(client, settings.pipeline_streams), settings.redis_group_name)


def wait_drained(
    settings: Settings,
    client: redis.Redis,
    timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
    poll_s: float = 0.5,
) -> bool:
    """Block until no stream has lag or pending entries for the group; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = outstanding(settings, client)
        if on_progress is not None:
            on_progress(left)
        if left == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def _payload_identity(raw: str) -> tuple[str | None, str | None]:
    """(tenant_id, image_sha256) of a DLQ'd payload (an ingest message or a later stage's)."""
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return None, None
    if not isinstance(payload, dict):
        return None, None
    source = payload.get("ingest") if isinstance(payload.get("ingest"), dict) else payload
    return source.get("tenant_id"), source.get("image_sha256")


def summarize(
    settings: Settings, client: redis.Redis, baseline: Baseline, result: IngestResult
) -> dict[str, Any]:
    counters = Stats(client).snapshot(result.tenant_id)["counters"]
    delta = {name: counters[name] - baseline.counters.get(name, 0) for name in counters}
    ours = {p.sha256 for p in result.published}
    dlq: list[dict[str, str]] = []
    for stream, last_id in baseline.dlq_last_ids.items():
        for entry_id, fields in client.xrange(dlq_stream(stream), min=f"({last_id}", max="+"):
            decoded = {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in fields.items()
            }
            tenant, sha = _payload_identity(decoded.get("payload", ""))
            if tenant == result.tenant_id and sha in ours:
                dlq.append(
                    {
                        "stream": stream,
                        "id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                        "image_sha256": sha or "",
                        "reason": decoded.get("reason", ""),
                    }
                )
    return {
        "tenant_id": result.tenant_id,
        "images": len(result.published),
        "skipped_files": len(result.skipped),
        "faces_processed": delta["faces_processed"],
        "faces_rejected": delta["faces_rejected"],
        "faces_dup_skipped": delta["faces_dup_skipped"],
        "dlq": len(dlq),
        "dlq_entries": dlq,
    }
