"""The bare models: a tight decode → detect → align → embed loop in one process (the baseline),
the embedder's batch speedup, and per-stage throughput at several batch sizes.

The baseline does what ``insightface.app.FaceAnalysis.get`` does (detect, then align and embed
every face), with the pipeline's own decoder and models, so the pipeline figure measures only
what the pipeline adds: streams, S3, JSON, crops, dedup, Qdrant, processes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from bench.common import median, rounded
from bench.images import BenchImage
from facepipe.core.settings import Settings, load_settings
from facepipe.vision import imaging
from facepipe.vision.imaging import ImageLimits, QualityThresholds, align_face, assess_quality, decode_image
from facepipe.vision.models import Detection, FaceDetector, FaceEmbedder, create_detector, create_embedder

BARE_STAGES = ("decode", "detect", "align", "embed")


def model_settings(pack: str, device: str, threads: int, **extra: object) -> Settings:
    return load_settings(model_pack=pack, inference_device=device, ort_intra_op_threads=threads, **extra)


def load_models(settings: Settings) -> tuple[FaceDetector, FaceEmbedder]:
    detector, embedder = create_detector(settings), create_embedder(settings)
    detector.load()
    embedder.load()
    return detector, embedder


@dataclass
class BareRun:
    images: int
    faces: int  # detected
    embedded: int  # passed the quality gates (the faces the pipeline embeds too)
    seconds: float
    cpu_seconds: float  # this process, every thread (ORT's included)
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run_bare(
    detector: FaceDetector,
    embedder: FaceEmbedder,
    images: Sequence[BenchImage],
    limits: ImageLimits,
    thresholds: QualityThresholds,
) -> BareRun:
    """decode → detect → align (+ quality gates) → embed (one call per image), timed per stage.

    The quality gates (cheap) keep the model work equal to the pipeline's: both embed only the
    faces that pass them. FaceAnalysis.get would embed every detection.
    """
    stage = dict.fromkeys(BARE_STAGES, 0.0)
    faces = embedded = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    for image in images:
        t0 = time.perf_counter()
        pixels = imaging.decode_image(image.data, limits)  # looked up each time: bench.whatif may patch it
        t1 = time.perf_counter()
        detections = detector.detect(pixels)
        t2 = time.perf_counter()
        crops = []
        for det in detections:
            crop = align_face(pixels, det.kps)
            if assess_quality(det.bbox, det.kps, det.score, crop, thresholds)[1] is None:
                crops.append(crop)
        t3 = time.perf_counter()
        if crops:
            embedder.embed(crops)
        t4 = time.perf_counter()
        stage["decode"] += t1 - t0
        stage["detect"] += t2 - t1
        stage["align"] += t3 - t2
        stage["embed"] += t4 - t3
        faces += len(detections)
        embedded += len(crops)
    return BareRun(
        len(images), faces, embedded, time.perf_counter() - started, time.process_time() - cpu_started, stage
    )


def stage_shares(stage_seconds: dict[str, float]) -> dict[str, float]:
    total = sum(stage_seconds.values())
    return {name: rounded(value / total) if total else 0.0 for name, value in stage_seconds.items()}


def face_crops(
    detector: FaceDetector, images: Sequence[BenchImage], limits: ImageLimits, count: int
) -> list[np.ndarray]:
    """``count`` aligned 112x112 crops of real faces (repeating the faces found when fewer)."""
    crops: list[np.ndarray] = []
    for image in images:
        pixels = decode_image(image.data, limits)
        crops += [align_face(pixels, det.kps) for det in detector.detect(pixels)]
        if len(crops) >= count:
            break
    if not crops:
        raise RuntimeError("no face found in the bench images")
    return [crops[i % len(crops)] for i in range(count)]


def embed_rate(embedder: FaceEmbedder, crops: Sequence[np.ndarray], batch: int) -> float:
    """Faces per second embedding every crop, ``batch`` faces per inference call."""
    started = time.perf_counter()
    for start in range(0, len(crops), batch):
        embedder.embed(crops[start : start + batch])
    return len(crops) / (time.perf_counter() - started)


def embed_batch_figure(
    embedder: FaceEmbedder, crops: Sequence[np.ndarray], batches: Sequence[int], repeats: int
) -> dict[str, object]:
    """Faces/s per batch size, interleaved repeats (the machine's noise hits every size alike)."""
    for batch in batches:  # warm-up: ORT allocates per shape on first use
        embedder.embed(crops[:batch])
    rates: dict[int, list[float]] = {batch: [] for batch in batches}
    for _ in range(repeats):
        for batch in batches:
            rates[batch].append(embed_rate(embedder, crops, batch))
    medians = {batch: median(values) for batch, values in rates.items()}
    return {
        "faces_per_s": {str(batch): rounded(value, 1) for batch, value in medians.items()},
        "runs": {str(batch): [rounded(v, 1) for v in values] for batch, values in rates.items()},
        "faces": len(crops),
    }


# --- batched detection (the detector service detects one image per call) -------------------


class BatchedScrfd:
    """SCRFD over a batch of images in one inference call (the graph has a dynamic batch axis).

    Reuses the loaded insightface model's session, anchors and NMS; each image is letterboxed
    into DET_SIZE x DET_SIZE as insightface does, so the boxes equal ``FaceDetector.detect``'s.
    """

    def __init__(self, detector: FaceDetector) -> None:
        model = getattr(detector, "_model", None)
        if model is None or not hasattr(model, "_feat_stride_fpn"):
            raise TypeError(f"{type(detector).__name__} is not a loaded SCRFD detector")
        self.model = model
        self.size = detector.det_size
        self.threshold = float(getattr(model, "det_thresh", detector.threshold))
        self.session = model._session_for_input_size((self.size, self.size))

    def letterbox(self, img: np.ndarray) -> tuple[np.ndarray, float]:
        height, width = img.shape[:2]
        if height / width > 1.0:
            new_h, new_w = self.size, int(self.size / (height / width))
        else:
            new_w, new_h = self.size, int(self.size * (height / width))
        canvas = np.zeros((self.size, self.size, 3), np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
        return canvas, new_h / height

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        boxed = [self.letterbox(img) for img in images]
        model = self.model
        blob = cv2.dnn.blobFromImages(
            [canvas for canvas, _ in boxed],
            1.0 / model.input_std,
            (self.size, self.size),
            (model.input_mean,) * 3,
            swapRB=True,
        )
        outputs = self.session.run(model.output_names, {model.input_name: blob})
        return [
            self._decode(outputs, b, scale, img.shape)
            for b, ((_, scale), img) in enumerate(zip(boxed, images, strict=True))
        ]

    def _decode(
        self, outputs: list[np.ndarray], b: int, scale: float, shape: tuple[int, ...]
    ) -> list[Detection]:
        from insightface.model_zoo.scrfd import distance2bbox, distance2kps

        model, fmc = self.model, self.model.fmc
        scores_all, boxes_all, kps_all = [], [], []
        for idx, stride in enumerate(model._feat_stride_fpn):
            scores = outputs[idx][b]
            cells = self.size // stride
            centers = np.stack(np.mgrid[:cells, :cells][::-1], axis=-1).astype(np.float32)
            centers = (centers * stride).reshape(-1, 2)
            if model._num_anchors > 1:
                centers = np.stack([centers] * model._num_anchors, axis=1).reshape(-1, 2)
            keep = np.where(scores >= self.threshold)[0]
            scores_all.append(scores[keep])
            boxes_all.append(distance2bbox(centers, outputs[idx + fmc][b] * stride)[keep])
            kps = distance2kps(centers, outputs[idx + 2 * fmc][b] * stride)
            kps_all.append(kps.reshape(kps.shape[0], -1, 2)[keep])
        scores = np.vstack(scores_all).ravel()
        if scores.size == 0:
            return []
        order = np.argsort(-scores, kind="stable")
        dets = np.hstack([np.vstack(boxes_all) / scale, scores[:, None]]).astype(np.float32)[order]
        kpss = (np.vstack(kps_all) / scale)[order]
        keep = model.nms(dets)
        height, width = shape[:2]
        limits = np.array([width, height, width, height], np.float32)
        found = [
            Detection(
                np.clip(dets[i, :4], 0, limits).astype(np.float32),
                kpss[i].astype(np.float32),
                float(dets[i, 4]),
            )
            for i in keep
        ]
        return sorted(found, key=lambda d: (round(float(d.bbox[0])), round(float(d.bbox[1]))))


def stage_throughput_figure(
    detector: FaceDetector,
    embedder: FaceEmbedder,
    pixels: Sequence[np.ndarray],
    crops: Sequence[np.ndarray],
    batches: Sequence[int],
    repeats: int,
) -> dict[str, object]:
    """Images/s of detection and faces/s of embedding at each batch size (medians of repeats).

    Batch 1 of detection is the service's own ``detect()``; larger batches go through
    :class:`BatchedScrfd` (what a batched detector would do; YuNet has no batch axis).
    """
    try:
        batched: BatchedScrfd | None = BatchedScrfd(detector)
    except TypeError:
        batched = None
    detection: dict[int, list[float]] = {}
    embedding: dict[int, list[float]] = {}
    for batch in batches:
        _detect_rate(detector, batched, pixels[:batch], batch)  # warm-up of this shape
        embedder.embed(crops[:batch])
    for _ in range(repeats):
        for batch in batches:
            if batch == 1 or batched is not None:
                detection.setdefault(batch, []).append(_detect_rate(detector, batched, pixels, batch))
            embedding.setdefault(batch, []).append(embed_rate(embedder, crops, batch))
    return {
        "detection_images_per_s": {str(b): rounded(median(v), 1) for b, v in detection.items()},
        "embedding_faces_per_s": {str(b): rounded(median(v), 1) for b, v in embedding.items()},
        "images": len(pixels),
        "faces": len(crops),
    }


def _detect_rate(
    detector: FaceDetector, batched: BatchedScrfd | None, pixels: Sequence[np.ndarray], batch: int
) -> float:
    started = time.perf_counter()
    if batch == 1 or batched is None:
        for img in pixels:
            detector.detect(img)
    else:
        for start in range(0, len(pixels), batch):
            batched.detect(pixels[start : start + batch])
    return len(pixels) / (time.perf_counter() - started)
