"""The generated image set of the reliability suite, with the faces each image must yield.

Images are composited at run time from the test photos (never stored in the repository):
re-encodes, crops, flips, scales, multi-face mosaics of different photos, and images with
no face at all. Which faces an image yields is ground truth measured once, before any
fault is injected, by the detector stage's own code (model, quality gates, pHash) on the
exact bytes that will be ingested; the unmodified photos are cross-checked against
MANIFEST.json's face counts.

Every image is given a tenant such that no two accepted faces of one tenant are within
``MIN_TENANT_DISTANCE`` bits (pHash Hamming) of each other, well above DEDUP_MAX_HAMMING.
So with dedup on, no expected face may be skipped as a near-duplicate: each one must be
indexed exactly once, and a face skipped as a "duplicate of itself" after a redelivery
shows up as lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from facepipe.core.settings import Settings

MIN_TENANT_DISTANCE = 20  # bits; DEDUP_MAX_HAMMING is 8
MAX_SIDE = 1100  # keeps detection cheap on 2 cores


@dataclass(frozen=True)
class ExpectedFace:
    index: int
    phash: str


@dataclass
class GeneratedImage:
    name: str  # how it was made, e.g. "mosaic:obama_1+biden_2"
    data: bytes
    content_type: str
    faces: list[ExpectedFace] = field(default_factory=list)  # accepted faces (ground truth)
    rejected: int = 0  # detections refused by a quality gate
    tenant: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def key(self) -> str:
        extension = "png" if self.content_type == "image/png" else "jpg"
        return f"{self.tenant}/{self.sha256[:2]}/{self.sha256}.{extension}"


def load_photos(faces_dir: Path) -> dict[str, Image.Image]:
    manifest = json.loads((faces_dir / "MANIFEST.json").read_text())["photos"]
    photos = {}
    for name in sorted(manifest):
        with Image.open(faces_dir / name) as image:
            photo = ImageOps.exif_transpose(image).convert("RGB")
        photo.thumbnail((MAX_SIDE, MAX_SIDE))
        photos[name.rsplit(".", 1)[0]] = photo
    return photos


def _encode(image: Image.Image, rng: random.Random) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if rng.random() < 0.15:
        image.save(buffer, "PNG", optimize=False, compress_level=1)
        return buffer.getvalue(), "image/png"
    image.save(buffer, "JPEG", quality=rng.randint(80, 95))
    return buffer.getvalue(), "image/jpeg"


def _crop(photo: Image.Image, rng: random.Random) -> Image.Image:
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.7, 0.95)), int(h * rng.uniform(0.7, 0.95))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return photo.crop((x, y, x + cw, y + ch))


def _scale(photo: Image.Image, rng: random.Random) -> Image.Image:
    factor = rng.uniform(0.45, 1.0)
    return photo.resize(
        (max(1, int(photo.width * factor)), max(1, int(photo.height * factor))), Image.LANCZOS
    )


def _mosaic(photos: list[Image.Image], rng: random.Random) -> Image.Image:
    cell = rng.choice((360, 420, 480))
    cols = 2
    rows = (len(photos) + 1) // 2
    canvas = Image.new("RGB", (cols * cell, rows * cell), tuple(rng.randint(0, 255) for _ in range(3)))
    for i, photo in enumerate(photos):
        tile = photo.copy()
        tile.thumbnail((cell, cell))
        canvas.paste(
            tile,
            ((i % cols) * cell + (cell - tile.width) // 2, (i // cols) * cell + (cell - tile.height) // 2),
        )
    return canvas


def _no_face(rng: random.Random) -> Image.Image:
    w, h = rng.randint(200, 900), rng.randint(200, 900)
    kind = rng.choice(("noise", "shapes", "gradient"))
    if kind == "noise":
        array = np.random.default_rng(rng.randint(0, 2**31)).integers(0, 256, (h, w, 3), dtype=np.uint8)
        return Image.fromarray(array).filter(ImageFilter.GaussianBlur(rng.uniform(0, 3)))
    image = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    if kind == "gradient":
        for x in range(0, w, 4):
            draw.rectangle((x, 0, x + 4, h), fill=(x * 255 // w, rng.randint(0, 255), 128))
        return image
    for _ in range(rng.randint(3, 20)):
        x1, y1 = rng.randint(0, w), rng.randint(0, h)
        box = (x1, y1, x1 + rng.randint(5, 200), y1 + rng.randint(5, 200))
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image


def composite(photos: dict[str, Image.Image], count: int, seed: int) -> Iterator[tuple[str, bytes, str]]:
    """``count`` distinct generated images (name, bytes, content type); the originals come first."""
    rng = random.Random(seed)
    names = sorted(photos)
    seen: set[str] = set()
    produced = 0

    def emit(name: str, image: Image.Image) -> Iterator[tuple[str, bytes, str]]:
        nonlocal produced
        data, content_type = _encode(image, rng)
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen or produced >= count:
            return
        seen.add(digest)
        produced += 1
        yield name, data, content_type

    for name in names:
        yield from emit(f"original:{name}", photos[name])
    while produced < count:
        roll = rng.random()
        name = rng.choice(names)
        photo = photos[name]
        if roll < 0.1:
            yield from emit("noface", _no_face(rng))
        elif roll < 0.3:
            picks = rng.sample(names, rng.randint(2, 4))
            yield from emit("mosaic:" + "+".join(picks), _mosaic([photos[p] for p in picks], rng))
        else:
            steps = []
            image = photo
            if rng.random() < 0.6:
                image, steps = _crop(image, rng), [*steps, "crop"]
            if rng.random() < 0.5:
                image, steps = ImageOps.mirror(image), [*steps, "flip"]
            if rng.random() < 0.6:
                image, steps = _scale(image, rng), [*steps, "scale"]
            if rng.random() < 0.3:
                enhance = rng.uniform(0.7, 1.3)
                image, steps = image.point(lambda v, e=enhance: min(255, int(v * e))), [*steps, "tone"]
            yield from emit(f"{'+'.join(steps) or 'reencode'}:{name}", image)


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def assign_tenants(
    images: list[GeneratedImage], prefix: str, min_distance: int = MIN_TENANT_DISTANCE
) -> list[GeneratedImage]:
    """Give each image the first tenant none of whose faces is within ``min_distance`` of its faces.

    Images whose own faces are that close to each other are dropped (they would dedup
    against themselves). Face-less images are spread round-robin.
    """
    tenants: list[list[str]] = []  # accepted pHashes per tenant
    kept: list[GeneratedImage] = []
    for n, image in enumerate(images):
        hashes = [face.phash for face in image.faces]
        if any(hamming(a, b) < min_distance for i, a in enumerate(hashes) for b in hashes[i + 1 :]):
            continue
        slot = None
        start = n % max(1, len(tenants))
        order = list(range(start, len(tenants))) + list(range(0, start))
        for t in order:
            if all(hamming(h, other) >= min_distance for h in hashes for other in tenants[t]):
                slot = t
                break
        if slot is None:
            tenants.append([])
            slot = len(tenants) - 1
        tenants[slot].extend(hashes)
        image.tenant = f"{prefix}{slot:03d}"
        kept.append(image)
    return kept


def measure(images: list[GeneratedImage], settings: Settings) -> None:
    """Fill in each image's accepted faces with the detector stage's own code (model, gates, pHash).

    The same decode, detector, ordering, alignment, quality gates and pHash as the running
    detector service, on the same bytes and settings: what the pipeline must index.
    """
    from facepipe.detector.handler import DetectorHandler
    from facepipe.vision.imaging import decode_image

    handler = DetectorHandler(settings)
    handler.detector.load()
    for image in images:
        pixels = decode_image(image.data, handler.limits)
        faces, rejected = handler._faces(pixels, handler.detector.detect(pixels))  # the service's own gates
        image.faces = [ExpectedFace(face.index, face.phash) for face in faces]
        image.rejected = len(rejected)
