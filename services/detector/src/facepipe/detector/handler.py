"""The detector stage: ingest message → download → decode → detect → align → quality → pHash.

One detected message is published per ingest message, zero faces included (a photo
without faces is a success, not an error). Faces that fail a quality gate are listed
under ``rejected`` with their reason and counted in ``faces_rejected``.

Failures of the message itself go to the DLQ with a reason of their own:
``invalid_fields``/``missing_fields`` (the message), ``object_not_found`` (no such
bucket/key), ``image_too_large`` (bytes), ``too_many_pixels``, ``unsupported_image_format``,
``corrupt_image`` (truncated or damaged), ``not_an_image``.
S3 being down is transient: the worker retries, nothing is dead-lettered for it.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from facepipe.core import metrics
from facepipe.core.messages import (
    DetectedFace,
    DetectedMessage,
    FaceQuality,
    ImageInfo,
    IngestMessage,
    RejectedFace,
    SourceRef,
    parse_message,
)
from facepipe.core.metrics import timed
from facepipe.core.settings import Settings
from facepipe.core.stats import Stats
from facepipe.core.worker import Outcome, Publish, StreamMessage, map_concurrently, worker_redis
from facepipe.store.storage import ObjectStore
from facepipe.vision.imaging import (
    ImageLimits,
    QualityThresholds,
    align_face,
    assess_quality,
    decode_image,
    encode_jpeg,
    phash64,
)
from facepipe.vision.models import Detection, FaceDetector, create_detector

log = logging.getLogger("facepipe.detector")

CROP_JPEG_QUALITY = 95  # the embedder works from this crop: keep JPEG loss well below model noise
HINT_PADDING = 0.5      # a hinted box is widened by half its size per side before detecting inside


class DetectorHandler:
    """:class:`~facepipe.core.worker.StageHandler` of the detector stage."""

    name = "detector"
    required_fields = ("image_sha256", "bucket", "key", "tenant_id")

    def __init__(self, settings: Settings, detector: FaceDetector | None = None) -> None:
        self.settings = settings
        self.input_stream = settings.ingest_stream
        self.limits = ImageLimits.from_settings(settings)
        self.thresholds = QualityThresholds.from_settings(settings)
        self.detector = detector or create_detector(settings)
        self.store: ObjectStore | None = None
        self.stats: Stats | None = None

    # ----------------------------------------------------------- lifecycle
    def setup(self) -> None:
        if not self.detector.loaded:
            self.detector.load()
        metrics.READY.labels(check="models").set(1)
        self.store = ObjectStore(self.settings)
        self.stats = Stats(worker_redis(self.settings), stage=self.name)
        log.info("Model pack: %s (%s on %s)", self.detector.pack.name, self.detector.path.name,
                 self.detector.loaded_provider)

    @property
    def loaded_provider(self) -> str | None:
        """Execution provider of the loaded detector (``None`` before ``setup``), for readiness."""
        return self.detector.loaded_provider

    def close(self) -> None:
        if self.stats is not None:
            self.stats.redis.close()

    # --------------------------------------------------------------- work
    def process_batch(self, messages: list[StreamMessage]) -> Sequence[Outcome | BaseException]:
        # Threads: downloads wait on the network, decoding and ORT release the GIL.
        return map_concurrently(self.process_one, messages, self.settings.max_worker_concurrency,
                                return_exceptions=True)

    def process_one(self, message: StreamMessage) -> Outcome:
        if self.store is None or self.stats is None:
            raise RuntimeError("DetectorHandler.setup() was not called")
        ingest = parse_message(IngestMessage, message.payload)
        timings: dict[str, float] = {}

        started = time.perf_counter()
        data = self.store.get_bytes(ingest.bucket, ingest.key, max_bytes=self.limits.max_bytes)
        timings["download"] = _ms_since(started)

        started = time.perf_counter()
        image = decode_image(data, self.limits)
        timings["decode"] = _ms_since(started)

        started = time.perf_counter()
        with timed(self.stats, "detection", tenant=ingest.tenant_id):
            detections = self._detect(image, ingest)
        timings["detection"] = _ms_since(started)

        faces, rejected = self._faces(image, detections)

        detected = DetectedMessage(
            ingest=ingest,
            source=SourceRef(stream=message.stream, id=message.id),
            image=ImageInfo(width=image.shape[1], height=image.shape[0]),
            model=self.detector.pack.detector_info(),
            faces=faces,
            rejected=rejected,
            timings_ms={name: round(ms, 2) for name, ms in timings.items()},
        )
        return Outcome(
            publish=[Publish(self.settings.detected_stream, detected)],
            summary={"faces_total": len(detections), "accepted": len(faces), "rejected": len(rejected)},
            # Counted in the ack's MULTI: a redelivered image does not count its rejections twice.
            counters={"faces_rejected": dict(Counter(face.reason for face in rejected))},
        )

    def _detect(self, image: np.ndarray, ingest: IngestMessage) -> list[Detection]:
        if ingest.face_hints:
            return self.detector.detect_in_regions(image, [hint.bbox for hint in ingest.face_hints],
                                                   pad=HINT_PADDING)
        return self.detector.detect(image)

    def _faces(self, image: np.ndarray, detections: list[Detection]) -> tuple[list[DetectedFace],
                                                                            list[RejectedFace]]:
        faces: list[DetectedFace] = []
        rejected: list[RejectedFace] = []
        for index, detection in enumerate(detections):
            crop = align_face(image, detection.kps)
            quality, reason = assess_quality(detection.bbox, detection.kps, detection.score, crop,
                                             self.thresholds)
            if reason is not None:
                rejected.append(RejectedFace(index=index, reason=reason))
                continue
            faces.append(DetectedFace(
                index=index,
                bbox=[round(float(v), 2) for v in detection.bbox],
                landmarks=[[round(float(x), 2), round(float(y), 2)] for x, y in detection.kps],
                det_score=round(detection.score, 4),
                quality=FaceQuality(**quality.as_dict()),
                phash=phash64(crop),
                crop_jpeg_b64=base64.b64encode(encode_jpeg(crop, CROP_JPEG_QUALITY)).decode("ascii"),
            ))
        return faces, rejected


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

