"""The embedder stage: detected messages → one embedding per face → embedded messages.

Faces are embedded in batches that span messages: the worker hands over up to
WORKER_BATCH_SIZE messages; when a read brings fewer than EMBED_BATCH_SIZE faces, it waits
up to EMBED_MAX_WAIT_MS for more (0: never, a lone message goes through at once). Their
crops are gathered and cut into chunks of EMBED_BATCH_SIZE faces, one inference call per
chunk. A face's vector does not depend on which chunk it landed in.

One embedded message is published per detected message (zero faces included),
``embedding_b64`` being the little-endian float32 bytes of the unit vector.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from facepipe.core import metrics
from facepipe.core.errors import PermanentError
from facepipe.core.messages import DetectedMessage, EmbeddedFace, EmbeddedMessage, parse_message
from facepipe.core.settings import Settings
from facepipe.core.stats import Stats
from facepipe.core.worker import Outcome, Publish, StreamMessage, map_concurrently, worker_redis
from facepipe.vision.imaging import CROP_SIZE, decode_jpeg
from facepipe.vision.models import FaceEmbedder, create_embedder

log = logging.getLogger("facepipe.embedder")


@dataclass
class _Prepared:
    parsed: DetectedMessage
    crops: list[np.ndarray]
    vectors: list[np.ndarray] = field(default_factory=list)
    embedding_ms: float = 0.0


def encode_embedding(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def decode_crop(crop_b64: str, index: int) -> np.ndarray:
    try:
        data = base64.b64decode(crop_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PermanentError("invalid_crop", f"face {index}: crop_jpeg_b64 is not base64: {exc}") from None
    crop = decode_jpeg(data)
    if crop.shape != (CROP_SIZE, CROP_SIZE, 3):
        raise PermanentError("invalid_crop", f"face {index}: crop is {crop.shape}, expected 112x112x3")
    return crop


class EmbedderHandler:
    """:class:`~facepipe.core.worker.StageHandler` of the embedder stage."""

    name = "embedder"
    required_fields = ("v", "ingest", "image", "model")

    def __init__(self, settings: Settings, embedder: FaceEmbedder | None = None) -> None:
        self.settings = settings
        self.input_stream = settings.detected_stream
        self.embedder = embedder or create_embedder(settings)
        self.batch_size = settings.embed_batch_size
        self.fill_wait_ms = settings.embed_max_wait_ms  # the worker loop's FillsBatches
        self.stats: Stats | None = None

    # ----------------------------------------------------------- lifecycle
    def setup(self) -> None:
        if not self.embedder.loaded:
            self.embedder.load()
        metrics.READY.labels(check="models").set(1)
        self.stats = Stats(worker_redis(self.settings), stage=self.name)
        log.info("Model pack: %s (%s, %d-d, on %s), batches of up to %d faces", self.embedder.pack.name,
                 self.embedder.path.name, self.embedder.dim, self.embedder.loaded_provider, self.batch_size)

    @property
    def loaded_provider(self) -> str | None:
        """Execution provider of the loaded embedder (``None`` before ``setup``), for readiness."""
        return self.embedder.loaded_provider

    def close(self) -> None:
        if self.stats is not None:
            self.stats.redis.close()

    # --------------------------------------------------------------- work
    def batch_is_full(self, messages: list[StreamMessage]) -> bool:
        """Whether the messages hold a whole inference batch of faces (the loop stops waiting)."""
        faces = sum(len(m.payload["faces"]) for m in messages if isinstance(m.payload.get("faces"), list))
        return faces >= self.batch_size

    def process_batch(self, messages: list[StreamMessage]) -> Sequence[Outcome | BaseException]:
        if self.stats is None:
            raise RuntimeError("EmbedderHandler.setup() was not called")
        # Decoding the crops is JPEG work that releases the GIL: in threads.
        prepared = map_concurrently(self._prepare, messages, self.settings.max_worker_concurrency,
                                    return_exceptions=True)
        self._embed_all([item for item in prepared if isinstance(item, _Prepared)])
        return [item if isinstance(item, BaseException) else self._outcome(item) for item in prepared]

    def _prepare(self, message: StreamMessage) -> _Prepared:
        parsed = parse_message(DetectedMessage, message.payload)
        return _Prepared(parsed, [decode_crop(face.crop_jpeg_b64, face.index) for face in parsed.faces])

    def _embed_all(self, prepared: list[_Prepared]) -> None:
        """All faces of all messages, EMBED_BATCH_SIZE at a time, one inference call each."""
        owners = [item for item in prepared for _crop in item.crops]
        crops = [crop for item in prepared for crop in item.crops]
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            started = time.perf_counter()
            vectors = self.embedder.embed(chunk)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            # Counted per face, so /stats' average is the cost of one face.
            self.stats.record_timing("embedding", elapsed_ms, count=len(chunk))
            metrics.EMBED_BATCH_SIZE.observe(len(chunk))
            for owner, vector in zip(owners[start:start + len(chunk)], vectors, strict=True):
                owner.vectors.append(vector)
                owner.embedding_ms += elapsed_ms / len(chunk)

    def _outcome(self, item: _Prepared) -> Outcome:
        parsed = item.parsed
        pack = self.embedder.pack
        model: dict[str, str | int] = {**pack.embedder_info(), "detector": parsed.model.detector}
        if parsed.model.pack != pack.name:
            # Crops share the ArcFace 112x112 layout, so any pack's recognizer can embed them;
            # say which pack found the faces.
            model["detector_pack"] = parsed.model.pack
        faces = [
            EmbeddedFace(**face.model_dump(), embedding_b64=encode_embedding(vector))
            for face, vector in zip(parsed.faces, item.vectors, strict=True)
        ]
        embedded = EmbeddedMessage(
            ingest=parsed.ingest,
            source=parsed.source,
            image=parsed.image,
            model=model,
            faces=faces,
            rejected=parsed.rejected,
            timings_ms={**parsed.timings_ms, "embedding": round(item.embedding_ms, 2)},
        )
        return Outcome(
            publish=[Publish(self.settings.embedded_stream, embedded)],
            summary={"faces_total": len(parsed.faces) + len(parsed.rejected), "accepted": len(faces),
                     "rejected": len(parsed.rejected)},
        )
