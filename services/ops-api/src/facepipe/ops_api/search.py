"""POST /search: find the faces of a query image among one tenant's indexed faces.

The query goes through the same steps as an ingested image (safe decode, the
MODEL_PACK detector, ArcFace alignment, the MODEL_PACK embedder), then each
query face is a tenant-filtered nearest-neighbour search: VectorIndex.search
has no way to cross tenants.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from facepipe.core.settings import Settings
from facepipe.vision.imaging import ImageLimits, align_face, decode_image
from facepipe.vision.models import FaceDetector, FaceEmbedder, create_detector, create_embedder

if TYPE_CHECKING:
    from facepipe.store.vectors import SearchHit, VectorIndex

MAX_TOP_K = 100


@dataclass
class SearchModels:
    detector: FaceDetector
    embedder: FaceEmbedder

    @classmethod
    def load(cls, settings: Settings) -> SearchModels:
        detector = create_detector(settings)
        embedder = create_embedder(settings)
        detector.load()
        embedder.load()
        return cls(detector, embedder)

    @property
    def provider(self) -> str:
        return self.detector.loaded_provider or "not loaded"

    def info(self) -> dict[str, Any]:
        return {**self.embedder.pack.embedder_info(), "provider": self.provider}


def _rounded(values: Any) -> list[float]:
    return [round(float(v), 1) for v in values]


def match_json(hit: SearchHit) -> dict[str, Any]:
    """One match as the API returns it: where the face came from and where its artifacts are."""
    payload = hit.payload
    artifacts = payload.get("artifacts")
    if not isinstance(artifacts, dict):
        artifacts = {
            name: payload[f"{name}_key"] for name in ("crop", "thumb", "metadata") if f"{name}_key" in payload
        }
    return {
        "score": round(hit.score, 4),
        "image_sha256": payload.get("image_sha256"),
        "face_index": payload.get("face_index"),
        "url": payload.get("url", ""),
        "site": payload.get("site", ""),
        "bbox": payload.get("bbox"),
        "artifacts": artifacts,
        "source": payload.get("source"),
        "point_id": hit.id,
    }


def search_image(
    settings: Settings,
    models: SearchModels,
    index: VectorIndex,
    image_bytes: bytes,
    tenant_id: str,
    top_k: int,
    site: str | None = None,
) -> dict[str, Any]:
    """Raises PermanentError (not_an_image, corrupt_image, image_too_large, ...) for a bad upload."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    image = decode_image(image_bytes, ImageLimits.from_settings(settings))
    timings["decode"] = (time.perf_counter() - started) * 1000
    step = time.perf_counter()
    detections = models.detector.detect(image)
    timings["detection"] = (time.perf_counter() - step) * 1000
    step = time.perf_counter()
    vectors = models.embedder.embed([align_face(image, det.kps) for det in detections])
    timings["embedding"] = (time.perf_counter() - step) * 1000
    step = time.perf_counter()
    faces = []
    for face_index, (det, vector) in enumerate(zip(detections, vectors, strict=True)):
        hits = index.search(tenant_id, vector, top_k=top_k, site=site)
        faces.append(
            {
                "index": face_index,
                "bbox": _rounded(det.bbox),
                "det_score": round(float(det.score), 4),
                "matches": [match_json(hit) for hit in hits],
            }
        )
    timings["search"] = (time.perf_counter() - step) * 1000
    height, width = image.shape[:2]
    return {
        "tenant_id": tenant_id,
        "top_k": top_k,
        "image": {"width": int(width), "height": int(height)},
        "model": models.info(),
        "faces": faces,
        "timings_ms": {name: round(ms, 1) for name, ms in timings.items()},
    }
