"""Translations between Qdrant's REST models (qdrant-client's pydantic ones) and the Edge store.

Each function accepts exactly the part of a request the stand-in implements and raises
:class:`ApiError` (400, Qdrant's "Wrong input" wording) for anything else, so a caller
that starts relying on more of the API finds out at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel
from qdrant_client.http import models as qm

from facepipe.store.vectors.edge_engine import (
    FULL_SCAN_THRESHOLD,
    HNSW_EF_CONSTRUCT,
    HNSW_M,
    EdgeCollection,
)
from facepipe.store.vectors.filters import PointFilter, UnsupportedFilterError

_DISTANCES = {d.value.lower(): d for d in qm.Distance}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def refuse_fields(model: BaseModel, what: str, allowed: set[str]) -> None:
    """A request field the stand-in does not implement is an error, not something to ignore."""
    extra = sorted(
        name for name in type(model).model_fields if name not in allowed and getattr(model, name) is not None
    )
    if extra:
        raise ApiError(
            400, f"Wrong input: the Qdrant stand-in does not implement {', '.join(extra)} in {what}"
        )


def spec_filter(flt: qm.Filter | None) -> PointFilter | None:
    """A REST filter as the project's spec: ``must`` of keyword MatchValue conditions only."""
    if flt is None:
        return None
    if flt.should or flt.must_not or flt.min_should:
        raise ApiError(400, "Wrong input: the Qdrant stand-in supports filters with `must` conditions only")
    conditions = flt.must if isinstance(flt.must, list) else [flt.must] if flt.must is not None else []
    matches: list[tuple[str, Any]] = []
    for condition in conditions:
        if not (isinstance(condition, qm.FieldCondition) and isinstance(condition.match, qm.MatchValue)):
            raise ApiError(
                400,
                f"Wrong input: the Qdrant stand-in supports key = value conditions only, got {condition!r}",
            )
        matches.append((condition.key, condition.match.value))
    try:
        return PointFilter(tuple(matches)) if matches else None
    except UnsupportedFilterError as exc:
        raise ApiError(400, f"Wrong input: {exc}") from exc


def query_vector(query: Any) -> list[float]:
    """The dense vector of a nearest-neighbour query (a bare vector or ``{"nearest": vector}``)."""
    if isinstance(query, qm.NearestQuery) and query.mmr is None:
        query = query.nearest
    if isinstance(query, list) and query and all(isinstance(x, float | int) for x in query):
        return [float(x) for x in query]
    raise ApiError(
        400, f"Wrong input: the Qdrant stand-in answers nearest-vector queries only, got {query!r}"
    )


def with_flag(value: Any, name: str, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise ApiError(400, f"Wrong input: the Qdrant stand-in accepts true/false for {name}, got {value!r}")


def point_ids(ids: Iterable[Any]) -> list[str | int]:
    """REST point ids (unsigned ints or UUID strings) as the engine takes them."""
    out: list[str | int] = []
    for value in ids:
        if isinstance(value, int) and value >= 0:
            out.append(value)
            continue
        try:
            out.append(str(uuid.UUID(str(value))))
        except ValueError as exc:
            raise ApiError(
                400, f"Wrong input: point id {value!r} is neither an unsigned integer nor a UUID"
            ) from exc
    return out


def point_id(value: Any) -> int | str:
    """An engine point id (int or uuid.UUID) as REST writes it."""
    return value if isinstance(value, int) else str(value)


def collection_info(collection: EdgeCollection) -> qm.CollectionInfo:
    params = collection.vector_params()
    indexes = collection.payload_indexes()
    return qm.CollectionInfo(
        status=qm.CollectionStatus.GREEN,
        optimizer_status=qm.OptimizersStatusOneOf.OK,
        points_count=collection.points_count(),
        segments_count=collection.segments_count(),
        config=qm.CollectionConfig(
            params=qm.CollectionParams(
                vectors=qm.VectorParams(size=params.size, distance=_DISTANCES[params.distance])
            ),
            # As EdgeStore creates collections: no graph, exact search (see edge_engine).
            hnsw_config=qm.HnswConfig(
                m=HNSW_M, ef_construct=HNSW_EF_CONSTRUCT, full_scan_threshold=FULL_SCAN_THRESHOLD
            ),
            optimizer_config=qm.OptimizersConfig(default_segment_number=0, flush_interval_sec=5),
        ),
        payload_schema={
            name: qm.PayloadIndexInfo(
                data_type=qm.PayloadSchemaType(kind),
                params=qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
                if is_tenant
                else None,
                points=points,
            )
            for name, (kind, is_tenant, points) in indexes.items()
        },
    )
