"""The indexer stage: embedded faces → dedup claim → S3 artifacts → Qdrant points → confirm → ack.

Order of effects for one message, and why it is safe to crash anywhere:

1. validate everything (message, tenant, embeddings, crops) before touching any store, so a
   bad message claims no dedup entry;
2. dedup check-and-claim of all its faces as one atomic step (``check_and_claim_batch``): a
   face that near-duplicates an indexed face of another owner (another image, or the same image
   ingested again) is skipped; the others are *claimed* with their owner (image_sha256, face
   index, ingest event: see :func:`~facepipe.indexer.claims.ingest_event_id`). A face near a
   face another message only claimed waits for it (:mod:`facepipe.indexer.claims`);
3. crop, thumbnail and metadata JSON to S3 at deterministic keys;
4. one Qdrant upsert for the faces of the whole batch (point id = UUIDv5 of tenant, image, face);
5. the claims of the messages that were indexed are confirmed, those of the others released;
6. the worker acks.

A crash after 2 leaves claims whose faces are not indexed yet: the redelivered message finds
claims owned by itself, so they are not duplicates, and 3-5 simply run again (overwriting the
same keys and points); if it is never redelivered in time, the claims expire
(DEDUP_CLAIM_TTL_SECONDS). A message that fails for good (dead-lettered) releases its claims,
so re-ingesting its image later indexes its faces. Nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import redis

from facepipe.core.errors import PermanentError
from facepipe.core.messages import EmbeddedMessage, parse_message
from facepipe.core.metrics import timed
from facepipe.core.packs import get_pack
from facepipe.core.settings import Settings
from facepipe.core.stats import Stats
from facepipe.core.worker import Outcome, StreamMessage, map_concurrently, worker_redis
from facepipe.indexer.artifacts import (
    decode_crop,
    decode_embedding,
    face_payload,
    json_bytes,
    thumbnail_jpeg,
)
from facepipe.indexer.claims import Claimed, ClaimPending, ingest_event_id, rounds
from facepipe.store.dedup import DedupCache, DedupResult, Message, Owner
from facepipe.store.storage import ObjectStore, artifact_keys
from facepipe.store.vectors import FacePoint, VectorIndex

log = logging.getLogger("facepipe.indexer")

__all__ = ["IndexerHandler", "decode_embedding", "ingest_event_id", "thumbnail_jpeg"]


@dataclass(eq=False)  # compared and hashed by identity: one message of the batch
class _Prepared:
    """One validated message, ready for its side effects."""

    message: StreamMessage
    parsed: EmbeddedMessage
    vectors: list[np.ndarray]
    crops: list[bytes]
    thumbs: list[bytes]
    claimed: Claimed | None = None  # after the dedup claim
    points: list[FacePoint] = field(default_factory=list)  # after its artifacts are stored

    def owners(self) -> list[tuple[str, Owner]]:
        ingest = self.parsed.ingest
        event = ingest_event_id(self.message)
        return [(f.phash, Owner(ingest.image_sha256, f.index, event)) for f in self.parsed.faces]


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
        self.index.ensure_collection(self.pack.dim)
        self.dedup = DedupCache(self.redis, self.settings)
        self.stats = Stats(self.redis, stage=self.name)
        log.info(
            "Indexer ready: collection %s (%d-d, pack %s), dedup %s (max Hamming %d, TTL %ds)",
            self.settings.qdrant_collection,
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
        items = [item for item in prepared if isinstance(item, _Prepared)]
        # Dedup in stream order (one atomic step per message, the whole batch in two round trips),
        # so within a batch the earlier message's face is the one kept.
        results: dict[_Prepared, Outcome | BaseException] = self._claim(items)
        indexed, not_indexed = self._index_in_rounds([item for item in items if item.claimed], results)
        results.update(self._settle(indexed, not_indexed))
        return [results[item] if isinstance(item, _Prepared) else item for item in prepared]

    def _index_in_rounds(
        self, items: list[_Prepared], results: dict[_Prepared, Outcome | BaseException]
    ) -> tuple[list[_Prepared], list[_Prepared]]:
        """Index the claimed messages, each after the messages of the batch it waits on; record
        their results. Returns the messages indexed and those not (failed, or still waiting)."""
        by_claim = {id(item.claimed): item for item in items}
        ordered, outside = rounds([item.claimed for item in items if item.claimed])
        indexed: list[_Prepared] = []
        not_indexed = [by_claim[id(claim)] for claim in outside]
        for item in not_indexed:
            results[item] = _waits(item)
        for round_claims in ordered:
            done = {item.claimed.key for item in indexed if item.claimed}
            ready = []
            for claim in round_claims:
                item = by_claim[id(claim)]
                if claim.waits_on() <= done:
                    claim.waited_out()
                    ready.append(item)
                else:  # a message it waited on failed: its claims are released, try again
                    results[item] = _waits(item)
                    not_indexed.append(item)
            for item, result in zip(ready, self._index_round(ready), strict=True):
                results[item] = result
                (indexed if isinstance(result, Outcome) else not_indexed).append(item)
        return indexed, not_indexed

    def _claim(self, items: list[_Prepared]) -> dict[_Prepared, Outcome | BaseException]:
        """Claim every message's new faces (``item.claimed``); the messages whose claim failed."""
        messages = [(item.parsed.ingest.tenant_id, item.owners()) for item in items]
        outcomes: list[list[DedupResult] | BaseException]
        try:
            outcomes = list(self.dedup.check_and_claim_batch(messages))
        except (ValueError, PermanentError):
            # A message the dedup refuses must not fail the rest of the batch: one by one.
            outcomes = [self._claim_one(message) for message in messages]
        except Exception as exc:  # Redis down: these messages are retried (the runtime classifies it)
            return dict.fromkeys(items, exc)
        failed: dict[_Prepared, Outcome | BaseException] = {}
        for item, (tenant, faces), outcome in zip(items, messages, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed[item] = outcome
            else:
                item.claimed = Claimed.of(tenant, faces, outcome)
        return failed

    def _claim_one(self, message: Message) -> list[DedupResult] | BaseException:
        try:
            return self.dedup.check_and_claim_batch([message])[0]
        except Exception as exc:
            return exc

    def _index_round(self, items: list[_Prepared]) -> list[Outcome | BaseException]:
        """Store the items' artifacts, then one upsert for all their points."""
        limit = self.settings.max_worker_concurrency
        staged = map_concurrently(self._store_artifacts, items, limit, return_exceptions=True)
        points = [point for item, out in zip(items, staged, strict=True) if isinstance(out, Outcome)
                  for point in item.points]
        if points:
            try:
                with timed(self.stats, "upsert"):
                    self.index.upsert(points)
            except Exception as exc:
                # Every message with points waits for this upsert: they all retry (or crash) together.
                return [exc if isinstance(out, Outcome) and item.points else out
                        for item, out in zip(items, staged, strict=True)]
        return staged

    def _settle(
        self, indexed: list[_Prepared], not_indexed: list[_Prepared]
    ) -> dict[_Prepared, BaseException]:
        """Confirm the claims of the indexed messages, then release the others' (a message that
        was indexed twice in the batch keeps its confirmed entry). Returns the indexed messages
        whose confirmation failed: they are retried (their own claims let them be indexed again)."""
        failed: dict[_Prepared, BaseException] = {}
        confirmed = [item.claimed.claims() for item in indexed if item.claimed and item.claimed.kept]
        if confirmed:
            try:
                self.dedup.confirm(confirmed)
            except Exception as exc:
                failed = dict.fromkeys(indexed, exc)
        released = [item.claimed.claims() for item in not_indexed if item.claimed and item.claimed.kept]
        if released:
            try:
                self.dedup.release(released)
            except Exception as exc:  # the claims expire after DEDUP_CLAIM_TTL_SECONDS instead
                log.warning("Could not release the dedup claims of %d message(s): %s", len(released), exc)
        return failed

    def _store_artifacts(self, item: _Prepared) -> Outcome:
        """Crop, thumbnail and metadata of every claimed face to S3; ``item.points`` to upsert."""
        assert item.claimed is not None
        parsed = item.parsed
        ingest = parsed.ingest
        tenant = ingest.tenant_id
        faces = parsed.faces
        created_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        uploads: list[tuple[str, str, bytes, str]] = []
        item.points = []
        for i in item.claimed.kept:
            face = faces[i]
            keys = artifact_keys(tenant, ingest.image_sha256, face.index)
            payload = face_payload(self.settings, parsed, face, keys, created_at)
            metadata = {**payload, "landmarks": face.landmarks, "image": parsed.image.model_dump()}
            uploads += [
                (self.settings.bucket_crops, keys.crop, item.crops[i], "image/jpeg"),
                (self.settings.bucket_thumbs, keys.thumb, item.thumbs[i], "image/jpeg"),
                (self.settings.bucket_metadata, keys.metadata, json_bytes(metadata), "application/json"),
            ]
            item.points.append(FacePoint(tenant, ingest.image_sha256, face.index, item.vectors[i], payload))
        if uploads:
            with timed(self.stats, "storage", count=len(uploads), tenant=tenant):
                map_concurrently(
                    lambda u: self.store.put_bytes(*u), uploads, self.settings.max_worker_concurrency
                )
        kept, skipped = len(item.claimed.kept), len(item.claimed.skipped)
        return Outcome(
            summary={
                "faces_total": len(faces) + len(parsed.rejected),
                "accepted": kept,
                "rejected": len(parsed.rejected),
                "dup_skipped": skipped,
            },
            counters={"faces_processed": kept, "faces_dup_skipped": skipped},
        )

    def _prepare(self, message: StreamMessage) -> _Prepared:
        parsed = parse_message(EmbeddedMessage, message.payload)
        model = parsed.model
        if model.pack != self.pack.name or model.dim != self.pack.dim:
            # Vectors of another pack are not comparable with this collection's, even at the same size.
            raise PermanentError(
                "model_pack_mismatch",
                f"message embedded with pack {model.pack!r} ({model.dim}-d); this indexer serves "
                f"{self.pack.name!r} ({self.pack.dim}-d) into collection {self.settings.qdrant_collection!r}",
            )
        indexes = [face.index for face in parsed.faces]
        if len(set(indexes)) != len(indexes):
            raise PermanentError("invalid_fields", f"duplicate face indexes {indexes}", fields=("faces",))
        vectors = [decode_embedding(face, model.dim) for face in parsed.faces]
        crops = [decode_crop(face) for face in parsed.faces]
        thumbs = [thumbnail_jpeg(crop) for crop in crops]  # also proves every crop decodes
        return _Prepared(message, parsed, vectors, crops, thumbs)


def _waits(item: _Prepared) -> ClaimPending:
    assert item.claimed is not None
    owners = sorted({owner.image_sha256 for owner in item.claimed.waits.values()})
    return ClaimPending(
        f"message {item.message.id}: {len(item.claimed.waits)} face(s) near faces of image(s) "
        f"{', '.join(owners)} that are being indexed; retrying once those are confirmed or released"
    )
