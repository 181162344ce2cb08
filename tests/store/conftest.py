from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for dedupkit, vectorkit

from dedupkit import cache_factory
from qdrantkit import rest_stand_in
from vectorkit import KINDS, Backend, make_backend

from facepipe.core.settings import Settings, load_settings
from facepipe.store.dedup import DedupCache
from facepipe.store.vectors import VectorIndex


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each vector index backend in turn (tests/store/vectorkit.py), on fresh storage."""
    if request.param == "server-rest":
        with rest_stand_in(tmp_path / "stand-in") as url:
            yield make_backend("server-rest", tmp_path, url)
    else:
        yield make_backend(request.param, tmp_path)


@pytest.fixture
def index(backend: Backend) -> Iterator[VectorIndex]:
    vectors = backend.open()
    yield vectors
    vectors.close()


@pytest.fixture
def settings(base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of the session's SeaweedFS and a fresh Qdrant folder, unique bucket names per test."""
    for name, value in base_env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


@pytest.fixture(params=["optimistic", "script"])
def make_cache(
    request: pytest.FixtureRequest, redis_client: redis.Redis, redis_url: str
) -> Callable[..., DedupCache]:
    """Caches of both paths: read-decide-commit (the default), and the all-in-Redis script
    that a tenant written to too often for optimistic commits falls back to."""
    if request.param == "script":
        return cache_factory(redis_client, redis_url, optimistic_attempts=0)
    return cache_factory(redis_client, redis_url)


@pytest.fixture
def optimistic_cache(redis_client: redis.Redis, redis_url: str) -> Callable[..., DedupCache]:
    return cache_factory(redis_client, redis_url)
