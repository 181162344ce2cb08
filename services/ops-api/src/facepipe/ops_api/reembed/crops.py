"""Stored faces in, new-pack points out: read each face's aligned crop from S3 and embed it again.

The indexer keeps every face's aligned 112x112 crop (``BUCKET_CROPS``) and its point's
payload is the face's metadata (what ``BUCKET_METADATA`` holds, minus landmarks), so a
new recognizer needs no download, decode or detection: crop in, vector out. The point
keeps its id and payload; only the model fields change (the detector stays the one that
found the face, as when the embedder embeds a crop another pack's detector made).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from facepipe.core.errors import PermanentError
from facepipe.core.packs import ModelPack
from facepipe.core.settings import Settings
from facepipe.store.storage import ObjectStore, artifact_keys
from facepipe.store.vectors import FacePoint, SearchHit
from facepipe.vision.imaging import CROP_SIZE, decode_jpeg
from facepipe.vision.models import FaceEmbedder, create_embedder

MAX_CROP_BYTES = 1024 * 1024  # crops are a few kB; anything this large is not one of ours


class CropEmbedder:
    """The pack's recognizer over crops fetched from S3 (``threads`` fetches at a time)."""

    def __init__(
        self,
        settings: Settings,
        pack: ModelPack,
        store: ObjectStore,
        *,
        batch: int,
        threads: int = 8,
        embedder: FaceEmbedder | None = None,
    ) -> None:
        self.settings = settings
        self.pack = pack
        self.store = store
        self.batch = max(1, batch)
        self.threads = max(1, threads)
        self.embedder = embedder or create_embedder(settings, pack.name)

    def load(self) -> None:
        """Load the recognizer (raises FileNotFoundError naming the file and how to get it)."""
        if not self.embedder.loaded:
            self.embedder.load()

    def points(
        self, hits: Sequence[SearchHit], tick: Callable[[], None] = lambda: None
    ) -> tuple[list[FacePoint], list[str]]:
        """The hits as points of this pack, and the ids of those with no crop left (deleted meanwhile).

        ``tick`` runs after each inference call (the backfill renews its lock there)."""
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="crops") as pool:
            crops = list(pool.map(self._crop, hits))  # S3 reads wait on the network: in parallel
        kept = [(hit, crop) for hit, crop in zip(hits, crops, strict=True) if crop is not None]
        images = [crop for _hit, crop in kept]
        vectors: list[np.ndarray] = []
        for start in range(0, len(images), self.batch):
            vectors.extend(self.embedder.embed(images[start : start + self.batch]))
            tick()
        points = [
            FacePoint(
                hit.payload["tenant_id"],
                hit.payload["image_sha256"],
                int(hit.payload["face_index"]),
                vector,
                self.payload(hit.payload),
            )
            for (hit, _crop), vector in zip(kept, vectors, strict=True)
        ]
        return points, [hit.id for hit, crop in zip(hits, crops, strict=True) if crop is None]

    def exists(self, point: FacePoint) -> bool:
        """Whether the face's crop is (still) stored."""
        return self.store.exists(*crop_location(self.settings, point.full_payload()))

    def _crop(self, hit: SearchHit) -> np.ndarray | None:
        bucket, key = crop_location(self.settings, hit.payload)
        try:
            data = self.store.get_bytes(bucket, key, max_bytes=MAX_CROP_BYTES)
        except PermanentError as exc:
            if exc.reason == "object_not_found":
                return None  # the image was deleted since the point was read
            raise
        crop = decode_jpeg(data)
        if crop.shape != (CROP_SIZE, CROP_SIZE, 3):
            raise PermanentError("invalid_crop", f"{bucket}/{key} is {crop.shape}, expected 112x112x3")
        return crop

    def payload(self, old: dict[str, Any]) -> dict[str, Any]:
        """The point's payload with this pack's model fields; the rest (and the detector) unchanged."""
        before = old.get("model") if isinstance(old.get("model"), dict) else {}
        detector_pack = before.get("detector_pack") or before.get("pack") or old.get("model_pack")
        model: dict[str, Any] = {**self.pack.embedder_info(), "detector": before.get("detector", "")}
        if detector_pack and detector_pack != self.pack.name:
            model["detector_pack"] = detector_pack
        return {**old, "model_pack": self.pack.name, "model": model}


def crop_location(settings: Settings, payload: dict[str, Any]) -> tuple[str, str]:
    """Where the face's crop is: as its payload says, else the indexer's deterministic key."""
    artifacts = payload.get("artifacts")
    crop = artifacts.get("crop") if isinstance(artifacts, dict) else None
    if isinstance(crop, dict) and crop.get("bucket") and crop.get("key"):
        return str(crop["bucket"]), str(crop["key"])
    keys = artifact_keys(payload["tenant_id"], payload["image_sha256"], int(payload["face_index"]))
    return settings.bucket_crops, keys.crop
