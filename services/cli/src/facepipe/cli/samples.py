"""Sample face photos that ship inside installed packages (no download, no photos in the repo).

- insightface's ``insightface/data/images/t1.jpg``: a group photo, 6 faces;
- scikit-image's ``skimage.data.astronaut()``: Eileen Collins, 1 face (written out as PNG).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def insightface_t1() -> Path:
    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("insightface is not installed")
    path = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the insightface package")
    return path


def astronaut_png(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "astronaut.png"
    if not path.exists():
        Image.fromarray(data.astronaut()).save(path)
    return path


def sample_images(folder: Path) -> list[Path]:
    """The packaged samples; ``folder`` receives the ones that must be written out."""
    return [insightface_t1(), astronaut_png(folder)]
