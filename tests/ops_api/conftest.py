"""ops-api under test: the real app (FastAPI TestClient) on the session's real Redis and SeaweedFS,
a fresh embedded Qdrant folder and unique bucket names per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from facepipe.core.settings import Settings, load_settings
from facepipe.ops_api.app import create_app
from facepipe.ops_api.backend import OpsBackend


@pytest.fixture
def settings(base_env: dict[str, str], models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in base_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("INFERENCE_DEVICE", "cpu")
    monkeypatch.setenv("ORT_INTRA_OP_THREADS", "1")
    monkeypatch.setenv("READ_BLOCK_MS", "100")
    return load_settings()


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[AppFactory]:
    """``make_client(**setting_overrides)`` -> a TestClient whose app runs its lifespan."""
    clients: list[TestClient] = []

    def factory(**overrides: object) -> TestClient:
        app_settings = load_settings(**overrides) if overrides else settings
        client = TestClient(create_app(app_settings, OpsBackend(app_settings), warm_models=False))
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: AppFactory) -> TestClient:
    return make_client()


@pytest.fixture
def raw_redis(redis_client: redis.Redis) -> redis.Redis:
    return redis_client
