"""The indexer stage: embedded faces → dedup commit → S3 artifacts → Qdrant points → ack.

Order of effects for one message, and why it is safe to crash anywhere:

1. validate everything (message, tenant, embeddings, crops) before touching any store, so a
   bad message claims no dedup entry;
2. dedup check-and-remember of all its faces as one atomic step (``check_and_remember_batch``):
   a face that near-duplicates a face remembered by another owner (another image, or the same
   image ingested again) is skipped; the others are remembered *with their owner* (image_sha256,
   face index, ingest event: see :func:`ingest_event_id`);
3. crop, thumbnail and metadata JSON to S3 at deterministic keys;
4. one Qdrant upsert per collection for the faces of the whole batch (point id = UUIDv5 of
   tenant, image, face): the vectors of each model pack go to that pack's collection
   (:mod:`facepipe.store.pack_routing`);
5. the worker acks.

A message whose vectors come from a pack the tenant no longer uses (nor this indexer) is
sent back to the embedder instead (published to the detected stream without its
embeddings): nothing of it is stored, and it returns embedded with the current pack.

A crash after 2 leaves dedup entries whose face is not indexed yet; the redelivered message
finds entries owned by itself, so they are not duplicates, and 3-4 simply run again
(overwriting the same keys and points). Nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis
from PIL import Image, UnidentifiedImageError

from facepipe.core.errors import PermanentError
from facepipe.core.messages import (
    MAX_REEMBED_HOPS,
    DetectedFace,
    DetectedMessage,
    EmbeddedFace,
    EmbeddedMessage,
    parse_message,
)
from facepipe.core.metrics import timed
from facepipe.core.packs import PACKS, get_pack
from facepipe.core.settings import Settings
from facepipe.core.stats import Stats
from facepipe.core.worker import Outcome, Publish, StreamMessage, map_concurrently, worker_redis
from facepipe.store.dedup import DedupCache, DedupResult, Owner
from facepipe.store.pack_migration import MigrationRecords
from facepipe.store.pack_routing import PackRouter
from facepipe.store.storage import ArtifactKeys, ObjectStore, artifact_keys
from facepipe.store.vectors import FacePoint, VectorIndex

log = logging.getLogger("facepipe.indexer")

THUMB_SIZE = 64
MAX_CROP_SIDE = 1024  # crops are 112x112; anything far larger is not one of ours
STREAM_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
# A stored embedding must be unit length (cosine); allow float32 rounding and re-normalise.
NORM_TOLERANCE = 1e-2


@dataclass
class _Prepared:
    """One validated message, ready for its side effects."""

    message: StreamMessage
    parsed: EmbeddedMessage
    collection: str  # where its pack's vectors go for its tenant
    vectors: list[np.ndarray]
    crops: list[bytes]
    thumbs: list[bytes]
    kept: list[int] = field(default_factory=list)  # positions in faces that are not duplicates


@dataclass
class _Indexed:
    """One message whose artifacts are stored; its points wait for the batch upsert."""

    outcome: Outcome
    points: list[FacePoint]
    collection: str = ""


@dataclass
class _SendBack:
    """A message to embed again with the current pack: no dedup, no artifacts, no points."""

    outcome: Outcome


def ingest_event_id(message: StreamMessage) -> str:
    """The ingest event a message belongs to: stable across its redeliveries, new for a new ingest.

    A message that carries ``source.id`` (the ingest stream entry the image came in with) is
    identified by it, so duplicates a stage published on its own redelivery, and a DLQ replay,
    count as the same event. Without it, this embedded entry's own id (stable across the
    indexer's redeliveries and retries) identifies the event.
    """
    source = message.payload.get("source")
    if isinstance(source, dict):
        source_id = source.get("id")
        if isinstance(source_id, str) and STREAM_ENTRY_ID.fullmatch(source_id):
            return source_id
    return message.id


def decode_embedding(face: EmbeddedFace, dim: int) -> np.ndarray:
    """The face's embedding as a unit float32 vector of ``dim``, or PermanentError("invalid_embedding")."""
    try:
        raw = base64.b64decode(face.embedding_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError(
            "invalid_embedding", f"face {face.index}: embedding_b64 is not base64: {exc}"
        ) from None
    if len(raw) != 4 * dim:
        raise PermanentError(
            "invalid_embedding",
            f"face {face.index}: embedding has {len(raw)} bytes, expected {4 * dim} ({dim} x f32)",
        )
    vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not np.all(np.isfinite(vector)) or abs(norm - 1.0) > NORM_TOLERANCE:
        raise PermanentError(
            "invalid_embedding",
            f"face {face.index}: embedding must be finite and L2-normalised (norm {norm:.4f})",
        )
    return vector / norm


def decode_crop(face: EmbeddedFace) -> bytes:
    try:
        return base64.b64decode(face.crop_jpeg_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError(
            "undecodable_crop", f"face {face.index}: crop_jpeg_b64 is not base64: {exc}"
        ) from None


def thumbnail_jpeg(crop_jpeg: bytes, size: int = THUMB_SIZE) -> bytes:
    """A ``size`` x ``size`` JPEG of the aligned crop; PermanentError("undecodable_crop") if it is no image.

    The crop comes from a stream anyone with Redis access can write to: the header's size is
    checked before decoding, so a crop claiming 20,000x20,000 pixels is refused, never allocated.
    """
    try:
        with Image.open(io.BytesIO(crop_jpeg)) as crop:  # lazy: parses the header only
            width, height = crop.size
            oversized = not (1 <= width <= MAX_CROP_SIDE and 1 <= height <= MAX_CROP_SIDE)
            thumb = None if oversized else crop.convert("RGB").resize((size, size), Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise PermanentError("undecodable_crop", "face crop is not a readable image") from None
    if thumb is None:
        raise PermanentError(
            "undecodable_crop", f"face crop claims {width}x{height} pixels (at most {MAX_CROP_SIDE})"
        )
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=85)
    return out.getvalue()


class IndexerHandler:
    """StageHandler of the embedded stream (see module doc for the order of effects)."""

    name = "indexer"
    required_fields = ("v", "ingest", "model", "faces")

    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis | None = None,
        store: ObjectStore | None = None,
        index: VectorIndex | None = None,
    ) -> None:
        self.settings = settings
        self.input_stream = settings.embedded_stream
        self.pack = get_pack(settings.model_pack)
        self._redis = redis_client
        self._store = store
        self._index = index
        self._owns_index = index is None

    # --- lifecycle -----------------------------------------------------------------------

    def setup(self) -> None:
        """Connect, create buckets and the collection (a collection of another size stops start-up)."""
        if self._redis is None:
            self._redis = worker_redis(self.settings)
        if self._store is None:
            self._store = ObjectStore(self.settings)
        self.store.ensure_buckets()
        if self._index is None:
            self._index = VectorIndex(self.settings)
        records = MigrationRecords(self.redis, self.settings.qdrant_collection)
        self.router = PackRouter(self.index, self.pack, records)
        collection = self.router.own_collection()
        self.dedup = DedupCache(self.redis, self.settings)
        self.stats = Stats(self.redis, stage=self.name)
        log.info(
            "Indexer ready: collection %s (%d-d, pack %s), dedup %s (max Hamming %d, TTL %ds)",
            collection,
            self.pack.dim,
            self.pack.name,
            "on" if self.dedup.enabled else "off",
            self.settings.dedup_max_hamming,
            self.settings.dedup_ttl_seconds,
        )

    def close(self) -> None:
        if self._index is not None and self._owns_index:
            self._index.close()
            self._index = None

    @property
    def redis(self) -> redis.Redis:
        assert self._redis is not None, "setup() first"
        return self._redis

    @property
    def store(self) -> ObjectStore:
        assert self._store is not None, "setup() first"
        return self._store

    @property
    def index(self) -> VectorIndex:
        assert self._index is not None, "setup() first"
        return self._index

    # --- the batch -----------------------------------------------------------------------

    def process_batch(self, messages: list[StreamMessage]) -> Sequence[Outcome | BaseException]:
        limit = self.settings.max_worker_concurrency
        prepared = map_concurrently(self._prepare, messages, limit, return_exceptions=True)
        # Dedup in stream order (one atomic check per message, the whole batch in two round
        # trips), so within a batch the earlier message's face is the one kept; storing and
        # indexing then run concurrently.
        checked = self._dedup(prepared)
        staged = map_concurrently(self._store_artifacts, checked, limit, return_exceptions=True)
        by_collection: dict[str, list[FacePoint]] = {}
        for item in staged:
            if isinstance(item, _Indexed) and item.points:
                by_collection.setdefault(item.collection, []).extend(item.points)
        if by_collection:
            try:
                with timed(self.stats, "upsert"):
                    for collection, points in by_collection.items():
                        self.index.view(collection).upsert(points)
            except Exception as exc:
                # Every message with points waits for this upsert: they all retry (or crash) together.
                return [
                    exc if isinstance(item, _Indexed) and item.points else _result(item) for item in staged
                ]
        return [_result(item) for item in staged]

    def _dedup(self, prepared: list[_Prepared | BaseException]) -> list[_Prepared | BaseException]:
        valid = [item for item in prepared if isinstance(item, _Prepared)]
        messages = []
        for item in valid:
            ingest = item.parsed.ingest
            event = ingest_event_id(item.message)
            owners = [(f.phash, Owner(ingest.image_sha256, f.index, event)) for f in item.parsed.faces]
            messages.append((ingest.tenant_id, owners))
        outcomes: list[list[DedupResult] | BaseException]
        try:
            outcomes = list(self.dedup.check_and_remember_batch(messages))
        except (ValueError, PermanentError):
            # A message the dedup refuses must not fail the rest of the batch: one by one.
            outcomes = [self._dedup_one(tenant, faces) for tenant, faces in messages]
        except Exception as exc:  # Redis down: these messages are retried (the runtime classifies it)
            return [exc if isinstance(item, _Prepared) else item for item in prepared]
        failed: dict[int, BaseException] = {}
        for item, outcome in zip(valid, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed[id(item)] = outcome
            else:
                item.kept = [i for i, result in enumerate(outcome) if not result.is_duplicate]
        return [failed.get(id(item), item) for item in prepared]

    def _dedup_one(self, tenant: str, faces: list[tuple[str, Owner]]) -> list[DedupResult] | BaseException:
        try:
            return self.dedup.check_and_remember_batch([(tenant, faces)])[0]
        except Exception as exc:
            return exc

    def _store_artifacts(self, item: _Prepared | _SendBack | BaseException) -> _Indexed:
        if isinstance(item, BaseException):
            raise item  # a failure of an earlier step of this message, passed through
        if isinstance(item, _SendBack):
            return _Indexed(outcome=item.outcome, points=[])
        parsed = item.parsed
        ingest = parsed.ingest
        tenant = ingest.tenant_id
        faces = parsed.faces
        created_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        uploads: list[tuple[str, str, bytes, str]] = []
        points: list[FacePoint] = []
        for i in item.kept:
            face = faces[i]
            keys = artifact_keys(tenant, ingest.image_sha256, face.index)
            payload = self._payload(parsed, face, keys, created_at)
            metadata = {**payload, "landmarks": face.landmarks, "image": parsed.image.model_dump()}
            uploads += [
                (self.settings.bucket_crops, keys.crop, item.crops[i], "image/jpeg"),
                (self.settings.bucket_thumbs, keys.thumb, item.thumbs[i], "image/jpeg"),
                (self.settings.bucket_metadata, keys.metadata, _json_bytes(metadata), "application/json"),
            ]
            points.append(FacePoint(tenant, ingest.image_sha256, face.index, item.vectors[i], payload))
        if uploads:
            with timed(self.stats, "storage", count=len(uploads), tenant=tenant):
                map_concurrently(
                    lambda u: self.store.put_bytes(*u), uploads, self.settings.max_worker_concurrency
                )
        dup_skipped = len(faces) - len(item.kept)
        return _Indexed(
            outcome=Outcome(
                summary={
                    "faces_total": len(faces) + len(parsed.rejected),
                    "accepted": len(item.kept),
                    "rejected": len(parsed.rejected),
                    "dup_skipped": dup_skipped,
                },
                counters={"faces_processed": len(item.kept), "faces_dup_skipped": dup_skipped},
            ),
            points=points,
            collection=item.collection,
        )

    def _prepare(self, message: StreamMessage) -> _Prepared | _SendBack:
        parsed = parse_message(EmbeddedMessage, message.payload)
        model = parsed.model
        pack = PACKS.get(model.pack)
        if pack is None or model.dim != pack.dim:
            raise PermanentError(
                "model_pack_mismatch",
                f"message embedded with pack {model.pack!r} ({model.dim}-d), which is not a known pack "
                f"of that size (known: {', '.join(f'{p.name} {p.dim}-d' for p in PACKS.values())})",
            )
        indexes = [face.index for face in parsed.faces]
        if len(set(indexes)) != len(indexes):
            raise PermanentError("invalid_fields", f"duplicate face indexes {indexes}", fields=("faces",))
        vectors = [decode_embedding(face, model.dim) for face in parsed.faces]
        crops = [decode_crop(face) for face in parsed.faces]
        thumbs = [thumbnail_jpeg(crop) for crop in crops]  # also proves every crop decodes
        collection = self.router.collection_for(parsed.ingest.tenant_id, pack)
        if collection is None:
            return self._send_back(parsed)
        return _Prepared(message, parsed, collection, vectors, crops, thumbs)

    def _send_back(self, parsed: EmbeddedMessage) -> _SendBack:
        """The message to the embedder again, without its vectors: the tenant uses another pack now."""
        tenant = parsed.ingest.tenant_id
        searched = self.router.route(tenant).pack
        if parsed.reembed_hops >= MAX_REEMBED_HOPS:
            raise PermanentError(
                "model_pack_mismatch",
                f"embedded with pack {parsed.model.pack!r} again after {parsed.reembed_hops} returns to the "
                f"embedder; tenant {tenant!r} searches with {searched.name if searched else '?'!r} and this "
                f"indexer serves {self.pack.name!r}: is an embedder of an old pack still running?",
            )
        detector_pack = (parsed.model.model_extra or {}).get("detector_pack") or parsed.model.pack
        again = DetectedMessage(
            ingest=parsed.ingest,
            source=parsed.source,
            image=parsed.image,
            model={"pack": detector_pack, "detector": parsed.model.detector},
            faces=[DetectedFace(**face.model_dump(exclude={"embedding_b64"})) for face in parsed.faces],
            rejected=parsed.rejected,
            timings_ms=parsed.timings_ms,
            reembed_hops=parsed.reembed_hops + 1,
        )
        log.info(
            "Image %s of tenant %s was embedded with pack %s; it searches with %s: sent back to the embedder",
            parsed.ingest.image_sha256, tenant, parsed.model.pack, searched.name if searched else "?",
        )
        rejected = len(parsed.rejected)
        summary = {"faces_total": len(parsed.faces) + rejected, "accepted": 0, "rejected": rejected}
        return _SendBack(Outcome(publish=[Publish(self.settings.detected_stream, again)], summary=summary))

    def _payload(
        self, parsed: EmbeddedMessage, face: EmbeddedFace, keys: ArtifactKeys, created_at: str
    ) -> dict:
        ingest = parsed.ingest
        return {
            "tenant_id": ingest.tenant_id,
            "site": ingest.site,
            "url": ingest.url,
            "image_sha256": ingest.image_sha256,
            "face_index": face.index,
            "bbox": face.bbox,
            "det_score": face.det_score,
            "quality": face.quality.model_dump(),
            "phash": face.phash,
            "phash_prefix": face.phash[:4],
            "model_pack": parsed.model.pack,
            "model": parsed.model.model_dump(),
            "source": {"bucket": ingest.bucket, "key": ingest.key},
            "artifacts": {
                "crop": {"bucket": self.settings.bucket_crops, "key": keys.crop},
                "thumb": {"bucket": self.settings.bucket_thumbs, "key": keys.thumb},
                "metadata": {"bucket": self.settings.bucket_metadata, "key": keys.metadata},
            },
            "created_at": created_at,
        }


def _result(item: _Indexed | BaseException) -> Outcome | BaseException:
    return item.outcome if isinstance(item, _Indexed) else item


def _json_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
