"""Move a store written by qdrant-client's local mode into Qdrant Edge, once, on open.

Before Qdrant Edge, the embedded store was qdrant-client's local mode: ``QDRANT_PATH``
held ``meta.json`` (the collections' configs) and ``collection/<name>/storage.sqlite``.
When :class:`~facepipe.store.vectors.edge_engine.EdgeStore` opens a folder with that
layout it migrates every collection (points, vectors, payloads; ids unchanged):

1. each collection is written into ``edge-migrating/<name>`` and, complete and counted,
   renamed to ``edge/<name>`` (a crash mid-way leaves nothing half-made that is used);
2. once all are in, the old files move to ``local-mode-migrated/``: nothing is deleted,
   and a rollback is moving them back.

A collection already in ``edge/`` is not migrated again (a previous run got that far).
The old files are read with qdrant-client, which loads a local-mode collection into
memory: fine for the sizes local mode could hold (its brute force searched 100k points
in over a second).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from facepipe.store.vectors.filters import KEYWORD_INDEXES, TENANT_KEY

if TYPE_CHECKING:
    from facepipe.store.vectors.edge_engine import EdgeStore

log = logging.getLogger("facepipe.store.vectors")

LEGACY_META = "meta.json"
LEGACY_FILES = (LEGACY_META, "collection", ".lock")
STAGING_DIR = "edge-migrating"
BACKUP_DIR = "local-mode-migrated"
BATCH = 1000


class MigrationError(RuntimeError):
    """The old store cannot be migrated as it is (the message says why and what to do)."""


@dataclass
class MigrationReport:
    root: Path
    points: dict[str, int] = field(default_factory=dict)  # collection -> points migrated
    skipped: list[str] = field(default_factory=list)  # already in Edge from an earlier run
    backup: Path | None = None
    seconds: float = 0.0


def legacy_collections(root: Path) -> list[str] | None:
    """Collection names of a qdrant-client local-mode store at ``root``, None when it is not one."""
    meta = root / LEGACY_META
    if not meta.is_file():
        return None
    try:
        return sorted(json.loads(meta.read_text()).get("collections", {}))
    except ValueError as exc:
        raise MigrationError(
            f"{meta} looks like qdrant-client local mode's but is not JSON ({exc}); move it away if it is "
            "not a vector store"
        ) from exc


def migrate_if_needed(store: EdgeStore) -> MigrationReport | None:
    """Migrate the store's folder if qdrant-client local mode wrote it (the caller holds its lock)."""
    names = legacy_collections(store.root)
    if names is None:
        return None
    started = time.perf_counter()
    report = MigrationReport(store.root)
    log.warning(
        "vector store %s was written by qdrant-client local mode: migrating %d collection(s) to Qdrant Edge",
        store.root,
        len(names),
    )
    from qdrant_client import QdrantClient

    old = QdrantClient(path=str(store.root))
    try:
        for name in names:
            if store.exists(name):
                report.skipped.append(name)
                continue
            report.points[name] = _migrate_collection(store, old, name)
    finally:
        old.close()
    report.backup = _set_aside(store.root)
    report.seconds = time.perf_counter() - started
    log.warning(
        "vector store %s migrated to Qdrant Edge in %.1f s: %s; the old files are in %s",
        store.root,
        report.seconds,
        ", ".join(f"{n} {p} points" for n, p in report.points.items()) or "nothing left to migrate",
        report.backup,
    )
    return report


def _migrate_collection(store: EdgeStore, old: object, name: str) -> int:
    from qdrant_client import QdrantClient
    from qdrant_client import models as qm

    from facepipe.store.vectors.edge_engine import EdgeCollection

    assert isinstance(old, QdrantClient)
    params = old.get_collection(name).config.params.vectors
    if not isinstance(params, qm.VectorParams):
        raise MigrationError(
            f"collection {name!r} in {store.root} has named vectors {sorted(params or {})}, which "
            "face-pipeline never wrote; migrate it by hand or move it out of QDRANT_PATH"
        )
    staging = store.root / STAGING_DIR / name
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted earlier run left
    staging.parent.mkdir(parents=True, exist_ok=True)
    target = EdgeCollection.create(staging, params.size, params.distance.value.lower())
    try:
        for key in KEYWORD_INDEXES:
            target.create_keyword_index(key, is_tenant=key == TENANT_KEY)
        offset = None
        while True:
            records, offset = old.scroll(
                name, limit=BATCH, offset=offset, with_payload=True, with_vectors=True
            )
            if records:
                target.upsert(
                    [str(r.id) if not isinstance(r.id, int) else r.id for r in records],
                    [r.vector for r in records],  # type: ignore[misc]
                    [dict(r.payload or {}) for r in records],
                )
            if offset is None:
                break
        expected = old.count(name, exact=True).count
        migrated = target.count(None)
        if migrated != expected:
            raise MigrationError(
                f"collection {name!r}: wrote {migrated} points of {expected}; nothing was changed"
            )
    finally:
        target.close()
    final = store.collection_path(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)
    return migrated


def _set_aside(root: Path) -> Path:
    """Move local mode's files into ``local-mode-migrated/`` (a numbered one if that exists)."""
    backup = root / BACKUP_DIR
    number = 1
    while backup.exists():
        number += 1
        backup = root / f"{BACKUP_DIR}-{number}"
    backup.mkdir()
    for name in LEGACY_FILES:
        if (root / name).exists():
            (root / name).rename(backup / name)
    shutil.rmtree(root / STAGING_DIR, ignore_errors=True)
    return backup


def migrate_local_store(root: Path) -> MigrationReport | None:
    """Migrate ``root`` now (what the store also does on its first open); None if there was nothing.

    For a command line (``facepipe`` wiring): refuses, naming the holder, while a process has
    the store open."""
    from facepipe.store.vectors.edge_engine import EdgeStore

    store = EdgeStore(root, migrate=False)
    try:
        return migrate_if_needed(store)
    finally:
        store.close()
