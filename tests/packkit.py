"""Helpers of the model-pack migration tests: index the sample photos with the real stages, ask who is who.

The photos are ../shared/data/faces (MANIFEST.json: who is in each single-person photo).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from facepipe.cli.ingest import ingest_paths
from facepipe.core.settings import Settings
from facepipe.core.worker import Worker
from facepipe.detector.handler import DetectorHandler
from facepipe.embedder.handler import EmbedderHandler
from facepipe.indexer.handler import IndexerHandler
from facepipe.sim.backing import start_qdrant_stand_in
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex
from facepipe.vision.imaging import ImageLimits, align_face, decode_image


def index_photos(
    settings: Settings,
    models: Any,
    paths: Sequence[Path],
    tenant: str,
    *,
    client: redis.Redis,
    store: ObjectStore,
    index: VectorIndex | None = None,
    indexer: bool = True,
) -> None:
    """Ingest as ``facepipe ingest`` does, then one batch of each real stage in this process.

    ``models`` (a tests/conftest.py LoadedPack) runs detector and embedder; the indexer uses
    ``index`` (or opens the store itself); ``indexer=False`` leaves that stage to another process.
    """
    ingest_paths(settings, client, store, list(paths), tenant, site=f"{tenant}.example")
    handlers: list[Any] = [
        DetectorHandler(settings, detector=models.detector),
        EmbedderHandler(settings, embedder=models.embedder),
    ]
    if indexer:
        handlers.append(IndexerHandler(settings, index=index))
    for handler in handlers:
        assert Worker(settings, handler, max_batch=20, once=True).run() == 0


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def identities(manifest: dict[str, dict], faces_dir: Path) -> dict[str, list[Path]]:
    """identity -> its single-person photos (only identities with two or more)."""
    found: dict[str, list[Path]] = {}
    for name, photo in sorted(manifest.items()):
        if photo["identity"]:
            found.setdefault(photo["identity"], []).append(faces_dir / name)
    return {who: paths for who, paths in found.items() if len(paths) > 1}


def query_vector(models: Any, path: Path) -> np.ndarray:
    """The embedding of the only face of a photo, computed as the ops-api's search does."""
    image = decode_image(path.read_bytes(), ImageLimits(50 << 20, 60_000_000, 16_384))
    [detection] = models.detector.detect(image)
    return models.embedder.embed([align_face(image, detection.kps)])[0]


def top_images(index: VectorIndex, tenant: str, vector: np.ndarray, count: int) -> list[str]:
    """The image ids of the ``count`` best matches (the tenant's route: where its searches go)."""
    return [hit.payload["image_sha256"] for hit in index.search(tenant, vector, top_k=count)]


def same_person_first(ranked: Sequence[str], person: Sequence[Path], group_shas: set[str]) -> bool:
    """Whether a person's single-person photos are the best matches, group photos aside.

    A group photo with the person in it is a fair match too; among the single-person photos
    the person's own ones must come before anyone else's."""
    singles = [sha for sha in dict.fromkeys(ranked) if sha not in group_shas]
    return set(singles[: len(person)]) == {sha_of(path) for path in person}


def group_photos(manifest: dict[str, dict], faces_dir: Path) -> set[str]:
    return {sha_of(faces_dir / name) for name, photo in manifest.items() if not photo["identity"]}


@contextlib.contextmanager
def qdrant_server(path: Path) -> Iterator[str]:
    """A Qdrant server for the test (the REST stand-in, its own process, data in ``path``); its URL."""
    server = start_qdrant_stand_in(path, path.with_name(f"{path.name}.log"))
    try:
        yield server.url
    finally:
        server.stop(timeout=60)
