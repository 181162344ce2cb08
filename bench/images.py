"""The bench image set, built at run time from the test photos (never committed).

Sources: every photo in the faces folder (``MANIFEST.json``) and InsightFace's ``t1.jpg``
(six faces) from the installed package. Variants are scaled (longest side 480..1280, the size
of typical crawled images), optionally mirrored and cropped, and JPEG-encoded, so every
image has bytes (and a SHA-256) of its own. The set is deterministic for a given count.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]
FACES_DIR = Path(os.environ.get("FACEPIPE_FACES_DIR", REPO_ROOT.parent / "shared" / "data" / "faces"))
LONG_SIDES = (1280, 1024, 800, 640, 480)


@dataclass(frozen=True)
class BenchImage:
    name: str  # source photo and variant, e.g. "obama_1.jpg@800f"
    data: bytes  # JPEG bytes
    sha256: str
    width: int
    height: int


def source_photos(faces_dir: Path = FACES_DIR) -> list[Path]:
    """The photos the set is built from; raises FileNotFoundError with what is missing."""
    manifest = faces_dir / "MANIFEST.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"no test photos at {faces_dir} (set FACEPIPE_FACES_DIR)")
    photos = [faces_dir / name for name in sorted(json.loads(manifest.read_text())["photos"])]
    t1 = insightface_sample()
    return [*photos, t1] if t1 is not None else photos


def insightface_sample() -> Path | None:
    try:
        import insightface
    except ImportError:
        return None
    path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
    return path if path.is_file() else None


def _load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in {"RGBA", "LA", "P"}:
            rgba = image.convert("RGBA")
            canvas = Image.new("RGB", rgba.size, (255, 255, 255))
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            return canvas
        return image.convert("RGB")


def build_image_set(count: int, faces_dir: Path = FACES_DIR, seed: int = 7) -> list[BenchImage]:
    """``count`` distinct JPEG images: variant k of every source in turn (round robin)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    sources = _sources(faces_dir)
    rng = np.random.default_rng(seed)
    images: list[BenchImage] = []
    variant = 0
    while len(images) < count:
        for name, original in sources:
            if len(images) >= count:
                break
            images.append(_variant(name, original, variant, rng))
        variant += 1
    return images


@lru_cache(maxsize=2)
def _sources(faces_dir: Path) -> list[tuple[str, Image.Image]]:
    return [(path.name, _load_rgb(path)) for path in source_photos(faces_dir)]


def _variant(name: str, original: Image.Image, variant: int, rng: np.random.Generator) -> BenchImage:
    long_side = LONG_SIDES[variant % len(LONG_SIDES)]
    mirrored = (variant // len(LONG_SIDES)) % 2 == 1
    image = original
    if variant >= len(LONG_SIDES):
        # Later variants keep 85-100 % of each side (faces at the border may be cut, as in crawls).
        width, height = image.size
        keep_w, keep_h = (int(side * rng.uniform(0.85, 1.0)) for side in (width, height))
        left, top = int(rng.integers(0, width - keep_w + 1)), int(rng.integers(0, height - keep_h + 1))
        image = image.crop((left, top, left + keep_w, top + keep_h))
    if mirrored:
        image = ImageOps.mirror(image)
    scale = min(1.0, long_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(82, 93)))
    data = buffer.getvalue()
    tag = f"{long_side}{'m' if mirrored else ''}{variant}"
    return BenchImage(f"{name}@{tag}", data, hashlib.sha256(data).hexdigest(), image.width, image.height)
