"""Object storage (S3 / MinIO API) through the ``minio`` SDK.

Failure classes, as the worker runtime needs them:

* a missing bucket or object is the message's fault → ``PermanentError("object_not_found")``;
* an object larger than the caller allows → ``PermanentError("image_too_large")``, found out
  from the response headers, before the body is read;
* the server unreachable, timing out or answering 5xx → ``TransientError`` (retried with backoff).

The SDK's default HTTP client waits five minutes and retries five times, so an outage would be
noticed only after many minutes; this client gives up within seconds and lets the worker's
backoff do the waiting.

Artifact keys are deterministic (:func:`artifact_keys`), so a redelivered message overwrites
the same objects instead of leaving copies behind.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import HTTPError as Urllib3Error

from facepipe.core.errors import PermanentError, TransientError
from facepipe.core.messages import IMAGE_ID_PATTERN
from facepipe.core.settings import Settings
from facepipe.core.tenancy import validate_tenant_id

T = TypeVar("T")

_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
_BUCKET_RACE_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})
_READ_CHUNK = 1 << 20

# Seconds: connect fast; a read may stall a little longer on a big object.
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class ObjectStat:
    bucket: str
    key: str
    size: int
    content_type: str
    etag: str


@dataclass(frozen=True)
class ArtifactKeys:
    """Where the indexer writes one face's artifacts (same key in each bucket family)."""

    crop: str
    thumb: str
    metadata: str


def image_prefix(tenant_id: str, image_sha256: str) -> str:
    """The key prefix holding every artifact of one image of one tenant (ends with '/').

    ``<tenant>/<sha[:2]>/<sha>/``: the two-character fan-out keeps listings of one prefix short
    on stores that shard by prefix.
    """
    if not isinstance(image_sha256, str) or not _IMAGE_ID.fullmatch(image_sha256):
        raise PermanentError(
            "invalid_fields",
            f"image_sha256 {image_sha256!r} cannot be used in a key",
            fields=("image_sha256",),
        )
    return f"{validate_tenant_id(tenant_id)}/{image_sha256[:2]}/{image_sha256}/"


def tenant_prefix(tenant_id: str) -> str:
    return f"{validate_tenant_id(tenant_id)}/"


def artifact_keys(tenant_id: str, image_sha256: str, face_index: int) -> ArtifactKeys:
    base = f"{image_prefix(tenant_id, image_sha256)}face_{face_index}"
    return ArtifactKeys(crop=f"{base}.jpg", thumb=f"{base}.jpg", metadata=f"{base}.json")


def _http_client(secure: bool) -> urllib3.PoolManager:
    retries = urllib3.Retry(
        total=2,
        connect=2,
        read=1,
        backoff_factor=0.2,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=None,  # S3 PUTs of whole objects are idempotent: retry them too
    )
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=16,
        retries=retries,
        cert_reqs="CERT_REQUIRED" if secure else "CERT_NONE",
        ca_certs=(os.environ.get("SSL_CERT_FILE") or certifi.where()) if secure else None,
    )


class ObjectStore:
    """The four buckets of the pipeline on one S3 endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = Minio(
            settings.minio_endpoint,
            access_key=settings.minio_access_key,
            secret_key=settings.minio_secret_key,
            secure=settings.minio_secure,
            http_client=_http_client(settings.minio_secure),
        )

    @property
    def buckets(self) -> tuple[str, str, str, str]:
        s = self.settings
        return (s.bucket_raw, s.bucket_crops, s.bucket_thumbs, s.bucket_metadata)

    # --- error mapping -------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one SDK call and translate its failures into the pipeline's error classes."""
        try:
            return fn()
        except S3Error as exc:
            if exc.code in _MISSING_CODES:
                raise PermanentError("object_not_found", f"{what}: {exc.code}: {exc.message}") from exc
            raise
        except ValueError as exc:
            # The SDK refused the bucket or key before sending anything (S3 naming rules): no
            # retry can help. A message's names are checked earlier; this is the safety net.
            raise PermanentError("invalid_fields", f"{what}: {exc or 'invalid bucket or key'}") from exc
        except (ServerError, InvalidResponseError) as exc:
            # 5xx (or a proxy's HTML error page): the store is not well right now.
            raise TransientError(f"{what}: S3 server error: {exc}") from exc
        except (Urllib3Error, OSError) as exc:
            raise TransientError(
                f"{what}: S3 endpoint {self.settings.minio_endpoint} unreachable: {exc}"
            ) from exc

    # --- buckets -------------------------------------------------------------------------

    def ensure_buckets(self) -> list[str]:
        """Create any missing bucket; returns the names created (empty when all existed)."""
        created: list[str] = []
        for bucket in self.buckets:
            if self._call(f"bucket_exists {bucket}", lambda b=bucket: self.client.bucket_exists(b)):
                continue
            try:
                self._call(f"make_bucket {bucket}", lambda b=bucket: self.client.make_bucket(b))
                created.append(bucket)
            except S3Error as exc:
                # Another replica created it between our check and our create.
                if exc.code not in _BUCKET_RACE_CODES:
                    raise
        return created

    def healthy(self) -> bool:
        """True when the endpoint answers and every bucket exists."""
        try:
            return all(self.client.bucket_exists(bucket) for bucket in self.buckets)
        except Exception:
            return False

    # --- objects -------------------------------------------------------------------------

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._call(
            f"put {bucket}/{key}",
            lambda: self.client.put_object(
                bucket, key, io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def get_bytes(self, bucket: str, key: str, max_bytes: int | None = None) -> bytes:
        """The whole object. With ``max_bytes``, a larger object is refused before it is read."""
        response = self._call(f"get {bucket}/{key}", lambda: self.client.get_object(bucket, key))
        try:
            declared = response.headers.get("Content-Length")
            if max_bytes is not None and declared is not None and int(declared) > max_bytes:
                raise PermanentError(
                    "image_too_large", f"{bucket}/{key} is {int(declared)} bytes, the limit is {max_bytes}"
                )
            return self._call(
                f"read {bucket}/{key}", lambda: self._read_capped(response, bucket, key, max_bytes)
            )
        finally:
            response.close()
            response.release_conn()

    @staticmethod
    def _read_capped(
        response: urllib3.BaseHTTPResponse, bucket: str, key: str, max_bytes: int | None
    ) -> bytes:
        # A server may omit Content-Length (chunked encoding): count while reading.
        parts: list[bytes] = []
        total = 0
        for chunk in response.stream(_READ_CHUNK):
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                raise PermanentError(
                    "image_too_large", f"{bucket}/{key} is over the limit of {max_bytes} bytes"
                )
            parts.append(chunk)
        return b"".join(parts)

    def stat(self, bucket: str, key: str) -> ObjectStat:
        info = self._call(f"stat {bucket}/{key}", lambda: self.client.stat_object(bucket, key))
        return ObjectStat(
            bucket=bucket,
            key=key,
            size=int(info.size or 0),
            content_type=info.content_type or "",
            etag=(info.etag or "").strip('"'),
        )

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.stat(bucket, key)
        except PermanentError as exc:
            if exc.reason == "object_not_found":
                return False
            raise
        return True

    def delete(self, bucket: str, key: str) -> None:
        """Remove one object; removing a missing object is not an error (S3 semantics)."""
        try:
            self._call(f"delete {bucket}/{key}", lambda: self.client.remove_object(bucket, key))
        except PermanentError as exc:
            if exc.reason != "object_not_found":
                raise

    def list_keys(self, bucket: str, prefix: str) -> Iterator[str]:
        objects = self._call(
            f"list {bucket}/{prefix}",
            lambda: iter(self.client.list_objects(bucket, prefix=prefix, recursive=True)),
        )
        while True:
            obj = self._call(f"list {bucket}/{prefix}", lambda: next(objects, None))
            if obj is None:
                return
            if obj.object_name and not obj.is_dir:
                yield obj.object_name

    def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Remove every object under ``prefix`` (must be non-empty); returns how many."""
        if not prefix or not prefix.endswith("/"):
            # An empty prefix would empty the bucket; "t1" would also match "t10/...".
            raise ValueError(f"delete_prefix needs a folder-like prefix ending in '/', got {prefix!r}")
        try:
            keys = list(self.list_keys(bucket, prefix))
        except PermanentError as exc:
            if exc.reason == "object_not_found":  # the bucket itself is missing: nothing to delete
                return 0
            raise
        for start in range(0, len(keys), 1000):
            batch = [DeleteObject(key) for key in keys[start : start + 1000]]
            errors = self._call(
                f"delete {bucket}/{prefix}*", lambda b=batch: list(self.client.remove_objects(bucket, b))
            )
            failed = [e for e in errors if e.code not in _MISSING_CODES]
            if failed:
                raise TransientError(
                    f"delete {bucket}/{prefix}*: {len(failed)} objects not deleted: {failed[0]}"
                )
        return len(keys)
