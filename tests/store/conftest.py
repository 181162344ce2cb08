from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for dedupkit, vectorkit

from dedupkit import cache_factory

from facepipe.core.settings import Settings, load_settings
from facepipe.store.dedup import DedupCache


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
