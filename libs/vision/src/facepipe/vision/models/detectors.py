"""Face detectors: one class per model family, each with a load/detect lifecycle."""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from facepipe.core.packs import ModelPack
from facepipe.vision.models.runtime import active_provider, select_providers, session_options

log = logging.getLogger("facepipe.models")


class Detection(NamedTuple):
    bbox: np.ndarray   # (4,) float32 x1, y1, x2, y2 in image pixels
    kps: np.ndarray    # (5, 2) float32: left eye, right eye, nose, left and right mouth corner
    score: float


class ModelNotLoadedError(RuntimeError):
    pass


class FaceDetector(ABC):
    """Finds faces in a BGR image. ``load()`` once, then ``detect()`` from any thread."""

    def __init__(self, pack: ModelPack, models_dir: Path, *, device: str = "auto",
                 intra_op_threads: int = 0, det_size: int = 640, threshold: float = 0.5) -> None:
        self.pack = pack
        self.path = pack.detector_path(models_dir)
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.det_size = det_size
        self.threshold = threshold
        self.loaded_provider: str | None = None

    @property
    def loaded(self) -> bool:
        return self.loaded_provider is not None

    def load(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"detector model {self.path} is missing: {self.pack.obtain_hint}")
        self.loaded_provider = self._load()
        # One throw-away pass: lazy allocations happen now, not on the first message.
        self._detect(np.zeros((self.det_size, self.det_size, 3), np.uint8))
        log.info("detector %s/%s loaded on %s", self.pack.name, self.path.name, self.loaded_provider)

    def detect(self, img: np.ndarray) -> list[Detection]:
        """Faces in the image, ordered left to right then top to bottom (stable indices)."""
        if not self.loaded:
            raise ModelNotLoadedError("call load() before detect()")
        if img.size == 0:
            return []
        return _ordered(_clipped(self._detect(img), img.shape[1], img.shape[0]))

    def detect_in_regions(self, img: np.ndarray, regions: Sequence[Sequence[float]],
                          pad: float = 0.5) -> list[Detection]:
        """Detect only inside hinted boxes, each widened by ``pad`` of its size per side.

        Coordinates come back in the full image's frame; a face found through two
        overlapping hints is reported once.
        """
        if not self.loaded:
            raise ModelNotLoadedError("call load() before detect_in_regions()")
        height, width = img.shape[:2]
        found: list[Detection] = []
        for region in regions:
            # Clipped to the image first: a hint of ±1e308 would overflow int() once padded.
            x1, x2 = (float(np.clip(float(v), 0, width)) for v in (region[0], region[2]))
            y1, y2 = (float(np.clip(float(v), 0, height)) for v in (region[1], region[3]))
            pad_x, pad_y = (x2 - x1) * pad, (y2 - y1) * pad
            left, top = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
            right, bottom = min(width, int(np.ceil(x2 + pad_x))), min(height, int(np.ceil(y2 + pad_y)))
            if right - left < 2 or bottom - top < 2:
                continue
            offset = np.array([left, top], np.float32)
            for det in self._detect(img[top:bottom, left:right]):
                found.append(Detection(det.bbox + np.tile(offset, 2), det.kps + offset, det.score))
        return _ordered(_non_max_suppression(_clipped(found, width, height), iou_threshold=0.4))

    @abstractmethod
    def _load(self) -> str: ...

    @abstractmethod
    def _detect(self, img: np.ndarray) -> list[Detection]: ...


def aspect_input_size(width: int, height: int, det_size: int, stride: int = 32) -> tuple[int, int]:
    """(w, h) of a detector input: longer side DET_SIZE, both sides multiples of the model's stride."""
    scale = det_size / max(width, height)
    return (
        max(stride, int(np.ceil(width * scale / stride)) * stride),
        max(stride, int(np.ceil(height * scale / stride)) * stride),
    )


class ScrfdDetector(FaceDetector):
    """InsightFace SCRFD (buffalo_sc, buffalo_l) through ``insightface.model_zoo``."""

    def _load(self) -> str:
        from insightface.model_zoo import get_model

        providers = select_providers(self.device)
        self._model = get_model(str(self.path), providers=providers,
                                sess_options=session_options(self.intra_op_threads))
        if self._model is None or getattr(self._model, "taskname", "") != "detection":
            raise RuntimeError(f"{self.path} is not a SCRFD detection model")
        self._model.prepare(0, input_size=(self.det_size, self.det_size), det_thresh=self.threshold)
        # A graph with dynamic height/width can run at the image's own aspect ratio instead of
        # a DET_SIZE square letterbox: ~30 % fewer pixels for a typical 3:2 photo, same faces
        # (measured by `make bench`: 27.5 -> 20.4 ms per image). Fixed-shape graphs keep the square.
        height_dim = self._model.session.get_inputs()[0].shape[2]
        self._dynamic_input = not isinstance(height_dim, int)
        return active_provider(self._model.session, providers)

    def _detect(self, img: np.ndarray) -> list[Detection]:
        height, width = img.shape[:2]
        if min(height, width) * self.det_size < max(height, width):
            # SCRFD letterboxes to DET_SIZE: a strip this thin shrinks below one pixel (cv2.resize
            # would raise) and cannot hold a face anyway.
            return []
        input_size = aspect_input_size(width, height, self.det_size) if self._dynamic_input else None
        boxes, kpss = self._model.detect(img, input_size=input_size)
        return [
            Detection(box[:4].astype(np.float32), kps.astype(np.float32), float(box[4]))
            for box, kps in zip(boxes, kpss, strict=True)
        ]


class YunetDetector(FaceDetector):
    """OpenCV YuNet through ``cv2.FaceDetectorYN`` (insightface would misroute it as SCRFD).

    The image is shrunk so its longer side is at most DET_SIZE, as SCRFD does.
    ``cv2.FaceDetectorYN`` keeps per-call state (its input size), so calls are
    serialised with a lock; OpenCV releases the GIL while it runs.
    """

    def _load(self) -> str:
        self._model = cv2.FaceDetectorYN.create(str(self.path), "", (self.det_size, self.det_size),
                                                self.threshold, 0.3, 5000)
        self._lock = threading.Lock()
        if self.device == "cuda":
            log.warning("the YuNet detector runs on OpenCV's CPU backend "
                        "(opencv-python-headless has no CUDA)")
        return "opencv-cpu"

    def _detect(self, img: np.ndarray) -> list[Detection]:
        height, width = img.shape[:2]
        scale = min(1.0, self.det_size / max(height, width))
        small = img if scale == 1.0 else cv2.resize(
            img, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
        )
        with self._lock:
            self._model.setInputSize((small.shape[1], small.shape[0]))
            _, faces = self._model.detect(small)
        if faces is None:
            return []
        detections = []
        for row in faces:
            x, y, w, h = (float(v) / scale for v in row[:4])
            bbox = np.array([max(0.0, x), max(0.0, y), min(float(width), x + w), min(float(height), y + h)],
                            np.float32)
            detections.append(Detection(bbox, (row[4:14].reshape(5, 2) / scale).astype(np.float32),
                                        float(row[14])))
        return detections


def _clipped(detections: list[Detection], width: int, height: int) -> list[Detection]:
    """Boxes inside the image (a face at the border gets a box partly outside it); landmarks kept."""
    limits = np.array([width, height, width, height], np.float32)
    return [d._replace(bbox=np.clip(d.bbox, 0, limits).astype(np.float32)) for d in detections]


def _ordered(detections: list[Detection]) -> list[Detection]:
    return sorted(detections, key=lambda d: (round(float(d.bbox[0])), round(float(d.bbox[1]))))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _non_max_suppression(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d.score):
        if all(_iou(det.bbox, other.bbox) <= iou_threshold for other in kept):
            kept.append(det)
    return kept
