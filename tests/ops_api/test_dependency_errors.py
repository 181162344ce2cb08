"""Every ops-api error is JSON with a stable ``error`` code; a dependency that is down gives 503
``dependency_unavailable`` naming it (``redis``, ``s3``, ``vector_store``).

Each dependency is a real server of this test's own (redis-server, SeaweedFS, the Qdrant REST
stand-in), really stopped, then started again on the same port: the ops-api recovers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from facepipe.cli.localservers import ServerProcess, start_redis, start_seaweedfs
from facepipe.core.settings import Settings, load_settings
from facepipe.ops_api.app import create_app
from facepipe.ops_api.backend import OpsBackend
from facepipe.sim.backing import start_qdrant_stand_in
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex

pytestmark = pytest.mark.slow

SHA = "ab" * 32


@dataclass
class Dependencies:
    root: Path
    redis: ServerProcess
    s3: ServerProcess
    qdrant: ServerProcess | None = None
    qdrant_port: int = 0  # any free port first, the same one after a restart

    @property
    def settings(self) -> Settings:
        return load_settings(
            redis_url=self.redis.url,
            minio_endpoint=self.s3.url,
            qdrant_url=f"http://127.0.0.1:{self.qdrant_port}",
            qdrant_collection="faces_errors",
        )

    def start_qdrant(self) -> None:
        self.qdrant = start_qdrant_stand_in(self.root / "qdrant", self.root / "qdrant.log", self.qdrant_port)
        self.qdrant_port = self.qdrant.port

    def stop(self, name: str) -> None:
        if name == "vector_store":
            if self.qdrant is not None:
                self.qdrant.proc.kill()
                self.qdrant.proc.wait(timeout=30)
        else:
            getattr(self, name).stop()

    def start(self, name: str) -> None:
        if name == "redis":
            self.redis = start_redis(self.root / "redis", port=self.redis.port)
        elif name == "s3":
            self.s3 = start_seaweedfs(self.root / "s3", port=self.s3.port)
        else:
            self.start_qdrant()


@pytest.fixture
def dependencies(tmp_path: Path) -> Iterator[Dependencies]:
    deps = Dependencies(tmp_path, start_redis(tmp_path / "redis"), start_seaweedfs(tmp_path / "s3"))
    try:
        deps.start_qdrant()
        ObjectStore(deps.settings).ensure_buckets()
        index = VectorIndex(deps.settings)
        index.ensure_collection(512)
        index.close()
        yield deps
    finally:
        for name in ("redis", "s3", "vector_store"):
            deps.stop(name)


@pytest.fixture
def client(dependencies: Dependencies) -> Iterator[TestClient]:
    settings = dependencies.settings
    app = create_app(settings, OpsBackend(settings), warm_models=False)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# What each dependency's outage breaks (method, path, request arguments).
CALLS = {
    "redis": [
        ("GET", "/stats", {}),
        ("GET", "/dlq", {}),
        ("POST", "/dlq/replay", {"json": {"stream": "face-processing-queue", "all": True}}),
        ("DELETE", f"/images/{SHA}", {"params": {"tenant_id": "demo"}}),
        ("DELETE", "/tenants/demo", {}),
    ],
    "s3": [
        ("DELETE", f"/images/{SHA}", {"params": {"tenant_id": "demo"}}),
        ("DELETE", "/tenants/demo", {}),
    ],
    "vector_store": [
        ("DELETE", f"/images/{SHA}", {"params": {"tenant_id": "demo"}}),
        ("DELETE", "/tenants/demo", {}),
    ],
}


@pytest.mark.parametrize("dependency", list(CALLS))
def test_a_stopped_dependency_gives_503_naming_it_then_the_api_recovers(
    dependency: str, dependencies: Dependencies, client: TestClient
) -> None:
    for method, path, kwargs in CALLS[dependency]:
        assert client.request(method, path, **kwargs).status_code == 200, path
    dependencies.stop(dependency)
    for method, path, kwargs in CALLS[dependency]:
        response = client.request(method, path, **kwargs)
        assert response.headers["content-type"] == "application/json", (path, response.text)
        body = response.json()
        assert (response.status_code, body["error"], body["dependency"]) == (
            503,
            "dependency_unavailable",
            dependency,
        ), (path, body)
        assert body["status"] == 503 and "unavailable" in body["message"]
        assert response.headers["retry-after"]
    # Whatever does not need it still answers.
    assert client.get("/").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    metrics = client.get("/metrics")
    assert metrics.status_code == 200  # a failed scrape would read as the ops-api being down
    if dependency == "redis":
        assert "facepipe_stream_length{" not in metrics.text  # no stale backlog for the autoscalers
    dependencies.start(dependency)
    for method, path, kwargs in CALLS[dependency]:
        assert client.request(method, path, **kwargs).status_code == 200, path


def test_an_unexpected_error_is_json_too(
    dependencies: Dependencies, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A mock: no input makes the ops-api fail this way; it stands for a bug.
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("facepipe.core.stats.Stats.snapshot", broken)
    response = client.get("/stats")
    assert response.status_code == 500
    assert response.json() == {
        "error": "internal_error",
        "message": "unexpected RuntimeError; see the ops-api log",
        "status": 500,
    }
