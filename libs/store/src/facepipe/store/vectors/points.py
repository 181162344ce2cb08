"""What the vector index stores and answers: face points, their ids, hits, routes, errors."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from facepipe.core.packs import ModelPack
from facepipe.core.tenancy import validate_tenant_id
from facepipe.store.vectors.filters import TENANT_KEY

# Fixed forever: changing it would give every face a new point id.
POINT_NAMESPACE = uuid.UUID("6f1c6d1e-4f7a-5b52-9a51-3c0de7a1f0c3")


class CollectionMismatchError(RuntimeError):
    """The collection exists with another vector size or distance than the model pack needs."""


class VectorStoreError(RuntimeError):
    """The embedded engine refused an operation (its message says why)."""


def point_id(tenant_id: str, image_sha256: str, face_index: int) -> str:
    """Deterministic point id of one face: the same face always maps to the same point."""
    return str(uuid.uuid5(POINT_NAMESPACE, f"{tenant_id}\x1f{image_sha256}\x1f{int(face_index)}"))


@dataclass(frozen=True)
class FacePoint:
    """One face to index. ``payload`` gets tenant_id, image_sha256 and face_index set from the fields."""

    tenant_id: str
    image_sha256: str
    face_index: int
    vector: Sequence[float] | np.ndarray
    payload: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return point_id(self.tenant_id, self.image_sha256, self.face_index)

    def full_payload(self) -> dict[str, Any]:
        return {
            **self.payload,
            TENANT_KEY: validate_tenant_id(self.tenant_id),
            "image_sha256": self.image_sha256,
            "face_index": int(self.face_index),
        }


@dataclass(frozen=True)
class SearchHit:
    """A stored face: its point id, similarity (0.0 from scroll), payload, and vector if asked for."""

    id: str
    score: float
    payload: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class VectorParams:
    size: int
    distance: str  # lower case: "cosine", "dot", "euclid", "manhattan"


@dataclass(frozen=True)
class Route:
    """Where one tenant's searches go: a collection, the pack of its vectors, and whether an alias says so.

    ``pinned`` False: the tenant has no alias (yet); its reads go to the base collection, as
    before collections were per pack. ``pack`` is None when nothing tells which pack wrote
    the collection (an empty base collection)."""

    tenant: str
    collection: str
    pack: ModelPack | None
    pinned: bool
