"""Fixtures of the face tests: the second model pack and the test photos, decoded once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facepipe.common.imaging import ImageLimits, decode_image

LIMITS = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=60_000_000, max_side=16_384)


@pytest.fixture(scope="session")
def yunet_sface(load_model_pack):
    return load_model_pack("opencv_yunet_sface")


@pytest.fixture(scope="session")
def photos(faces_manifest: dict[str, dict], faces_dir: Path) -> dict[str, np.ndarray]:
    """Every manifest photo decoded with the pipeline's own decoder (BGR)."""
    return {name: decode_image((faces_dir / name).read_bytes(), LIMITS) for name in faces_manifest}
