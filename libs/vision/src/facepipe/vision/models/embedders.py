"""Face embedders: aligned 112x112 BGR crops in, L2-normalised float32 vectors out.

One inference call per ``embed()`` batch. Every recognizer here is a plain CNN
with inference-mode batch norm, so a face's vector does not depend on what else
is in its batch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from facepipe.core.packs import ModelPack
from facepipe.vision.models.detectors import ModelNotLoadedError
from facepipe.vision.models.runtime import active_provider, select_providers, session_options

log = logging.getLogger("facepipe.models")

CROP_SHAPE = (112, 112, 3)


class FaceEmbedder(ABC):
    """``load()`` once, then ``embed()`` batches from any thread."""

    def __init__(self, pack: ModelPack, models_dir: Path, *, device: str = "auto",
                 intra_op_threads: int = 0) -> None:
        self.pack = pack
        self.path = pack.recognizer_path(models_dir)
        self.device = device
        self.intra_op_threads = intra_op_threads
        self.loaded_provider: str | None = None
        self.dim = pack.dim
        self._session: ort.InferenceSession | None = None

    @property
    def loaded(self) -> bool:
        return self.loaded_provider is not None

    def load(self) -> None:
        if not self.path.is_file():
            raise FileNotFoundError(f"recognizer model {self.path} is missing: {self.pack.obtain_hint}")
        providers = select_providers(self.device)
        self._session = self._create_session(providers)
        self.loaded_provider = active_provider(self._session, providers)
        probe = self.embed(np.zeros((1, *CROP_SHAPE), np.uint8))
        if probe.shape != (1, self.pack.dim):
            raise RuntimeError(
                f"{self.path.name} gives {probe.shape[1]}-d vectors, pack says {self.pack.dim}"
            )
        log.info("embedder %s/%s (%d-d) loaded on %s", self.pack.name, self.path.name, self.dim,
                 self.loaded_provider)

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """N aligned crops (N x 112 x 112 x 3 BGR uint8) -> N x D float32, unit length."""
        if self._session is None:
            raise ModelNotLoadedError("call load() before embed()")
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        images = [np.asarray(crop) for crop in crops]
        for image in images:
            if image.shape != CROP_SHAPE:
                raise ValueError(f"crop shape {image.shape}, expected {CROP_SHAPE} (use align_face)")
        vectors = self._infer(images).astype(np.float32, copy=False)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    @abstractmethod
    def _create_session(self, providers: list[str]) -> ort.InferenceSession: ...

    @abstractmethod
    def _infer(self, images: list[np.ndarray]) -> np.ndarray: ...


class ArcFaceEmbedder(FaceEmbedder):
    """InsightFace ArcFace (w600k_mbf, w600k_r50) through ``insightface.model_zoo``."""

    def _create_session(self, providers: list[str]) -> ort.InferenceSession:
        from insightface.model_zoo import get_model

        self._model = get_model(str(self.path), providers=providers,
                                sess_options=session_options(self.intra_op_threads))
        if self._model is None or getattr(self._model, "taskname", "") != "recognition":
            raise RuntimeError(f"{self.path} is not an ArcFace recognition model")
        return self._model.session

    def _infer(self, images: list[np.ndarray]) -> np.ndarray:
        return self._model.get_feat(images)  # one blobFromImages + one session.run


class SFaceEmbedder(FaceEmbedder):
    """OpenCV SFace, graph patched by ``make models`` to a dynamic batch.

    The graph subtracts 127.5 and scales by 1/128 itself, so the input is the raw
    0..255 RGB crop (mean 0, std 1); insightface would route it as ArcFace and
    normalise twice.
    """

    def _create_session(self, providers: list[str]) -> ort.InferenceSession:
        session = ort.InferenceSession(str(self.path), session_options(self.intra_op_threads),
                                       providers=providers)
        self._input_name = session.get_inputs()[0].name
        return session

    def _infer(self, images: list[np.ndarray]) -> np.ndarray:
        blob = cv2.dnn.blobFromImages(images, 1.0, (112, 112), (0.0, 0.0, 0.0), swapRB=True)
        return self._session.run(None, {self._input_name: np.ascontiguousarray(blob, np.float32)})[0]
