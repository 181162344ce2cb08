"""Search every byte the pipeline keeps for traces of deleted data: every Redis key of any type
(stream and DLQ entries included), every object of every bucket, every point of the collection."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import redis

from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex


@dataclass
class Secrets:
    """What must not be found anywhere: byte strings, and vectors (found when cosine > 0.999)."""

    needles: dict[str, bytes] = field(default_factory=dict)  # what it is -> the bytes
    vectors: list[np.ndarray] = field(default_factory=list)

    def add(self, what: str, value: str | bytes) -> None:
        self.needles[what] = value.encode() if isinstance(value, str) else value


def _redis_values(client: redis.Redis, key: bytes) -> Iterable[bytes]:
    kind = client.type(key)
    if kind == b"string":
        yield client.get(key) or b""
    elif kind == b"hash":
        for name, value in client.hgetall(key).items():
            yield name
            yield value
    elif kind == b"set":
        yield from client.smembers(key)
    elif kind == b"list":
        yield from client.lrange(key, 0, -1)
    elif kind == b"zset":
        yield from client.zrange(key, 0, -1)
    elif kind == b"stream":
        for entry_id, fields in client.xrange(key):
            yield entry_id
            for name, value in fields.items():
                yield name
                yield value


def redis_blobs(url: str) -> dict[str, bytes]:
    """Every key of the database: its name and everything it holds."""
    client = redis.Redis.from_url(url)  # bytes, as stored
    try:
        return {key.decode(errors="replace"): key + b"\0".join(_redis_values(client, key))
                for key in client.scan_iter("*", count=1000)}
    finally:
        client.close()


def s3_blobs(store: ObjectStore, buckets: Iterable[str]) -> dict[str, bytes]:
    """Every object of the buckets: its key and its bytes."""
    return {f"{bucket}/{key}": key.encode() + store.get_bytes(bucket, key)
            for bucket in buckets for key in store.list_keys(bucket, "")}


def vector_points(index: VectorIndex, tenants: Iterable[str]) -> list[tuple[str, bytes, np.ndarray]]:
    """Every point of these tenants (through the store's own reads): id, payload as JSON, vector."""
    return [
        (hit.id, json.dumps(hit.payload).encode(), np.asarray(hit.vector, dtype=np.float32))
        for tenant in tenants
        for hit in index.scroll(tenant, with_vectors=True)
    ]


def found(secrets: Secrets, redis_url: str, store: ObjectStore, buckets: Iterable[str],
          index: VectorIndex, tenants: Iterable[str]) -> list[str]:
    """Where each secret was found (empty: nowhere); the vector store is read for ``tenants``."""
    places = {f"redis {k}": v for k, v in redis_blobs(redis_url).items()}
    places |= {f"s3 {k}": v for k, v in s3_blobs(store, buckets).items()}
    points = vector_points(index, tenants)
    places |= {f"qdrant point {pid}": pid.encode() + payload for pid, payload, _ in points}
    hits = [f"{what} in {place}" for place, blob in places.items()
            for what, needle in secrets.needles.items() if needle in blob]
    for pid, _payload, vector in points:
        hits += [f"a deleted embedding as qdrant point {pid}" for deleted in secrets.vectors
                 if float(vector @ deleted) > 0.999]
    return hits
