"""Model packs and the two model tasks: face detection and face embedding.

    detector = create_detector(settings); detector.load()
    detections = detector.detect(bgr_image)            # [Detection(bbox, kps, score)]
    embedder = create_embedder(settings); embedder.load()
    vectors = embedder.embed(aligned_crops)            # N x D float32, unit length

Model files live in MODELS_DIR/<pack>/ (``make models`` fetches the fetchable packs).
"""

from __future__ import annotations

from facepipe.core.packs import PACKS, ModelPack, get_pack
from facepipe.core.settings import Settings
from facepipe.vision.models.detectors import (
    Detection,
    FaceDetector,
    ModelNotLoadedError,
    ScrfdDetector,
    YunetDetector,
)
from facepipe.vision.models.embedders import ArcFaceEmbedder, FaceEmbedder, SFaceEmbedder
from facepipe.vision.models.runtime import select_providers

__all__ = [
    "PACKS",
    "Detection",
    "FaceDetector",
    "FaceEmbedder",
    "ModelNotLoadedError",
    "ModelPack",
    "create_detector",
    "create_embedder",
    "detection_threshold",
    "get_pack",
    "select_providers",
]

_DETECTORS: dict[str, type[FaceDetector]] = {"scrfd": ScrfdDetector, "yunet": YunetDetector}
_EMBEDDERS: dict[str, type[FaceEmbedder]] = {"arcface": ArcFaceEmbedder, "sface": SFaceEmbedder}


def detection_threshold(settings: Settings, pack: ModelPack) -> float:
    """DET_THRESHOLD when set explicitly, else the pack's own default."""
    if "det_threshold" in settings.model_fields_set:
        return settings.det_threshold
    return pack.default_det_threshold


def create_detector(settings: Settings, pack_name: str | None = None) -> FaceDetector:
    """The MODEL_PACK detector, not yet loaded (call ``load()``)."""
    pack = get_pack(pack_name or settings.model_pack)
    return _DETECTORS[pack.detector_kind](
        pack, settings.models_dir, device=settings.inference_device,
        intra_op_threads=settings.ort_intra_op_threads, det_size=settings.det_size,
        threshold=detection_threshold(settings, pack),
    )


def create_embedder(settings: Settings, pack_name: str | None = None) -> FaceEmbedder:
    """The MODEL_PACK embedder, not yet loaded (call ``load()``)."""
    pack = get_pack(pack_name or settings.model_pack)
    return _EMBEDDERS[pack.recognizer_kind](
        pack, settings.models_dir, device=settings.inference_device,
        intra_op_threads=settings.ort_intra_op_threads,
    )
