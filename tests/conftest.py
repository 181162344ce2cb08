"""Session-wide real servers: a redis-server and a SeaweedFS S3 server on free ports.

Every test that needs Redis or S3 uses these (or starts its own when it must kill
one). They are torn down at the end of the session.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import redis

from facepipe.cli import ports
from facepipe.cli.localcluster import LocalRedisCluster, start_redis_cluster
from facepipe.cli.localservers import ServerProcess, start_redis, start_seaweedfs
from facepipe.core.redisconn import Client, connect, masters

if TYPE_CHECKING:
    from facepipe.operator.kube import KubeApi
    from facepipe.sim.emulator import EmulatorServer

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # shared helpers: imagekit
FACES_DIR = Path(os.environ.get("FACEPIPE_FACES_DIR", REPO_ROOT.parent / "shared" / "data" / "faces"))


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port where connecting is refused for the whole test (bound, never listening)."""
    with ports.refused_port() as port:
        yield port


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: ServerProcess) -> Iterator[str]:
    """The session server's URL, flushed after each test so tests never see each other's keys."""
    yield redis_server.url
    redis.Redis.from_url(redis_server.url).flushall()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real 3-master Redis Cluster (no replicas) on loopback, for the session."""
    cluster = start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_url(redis_cluster: LocalRedisCluster) -> Iterator[str]:
    """``redis+cluster://`` of the session cluster, every master flushed after each test."""
    yield redis_cluster.url
    client = connect(redis_cluster.url)
    for master in masters(client):
        master.flushall()
    client.close()


@pytest.fixture
def cluster_client(cluster_url: str) -> Iterator[Client]:
    """A decoding ``RedisCluster`` client of the session cluster."""
    client = connect(cluster_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture
def base_env(redis_url: str, s3_server: ServerProcess, tmp_path: Path) -> dict[str, str]:
    """Environment for services under test: the session's servers, fresh names per test.

    Bucket and collection names are unique per test so tests sharing the S3 server
    never see each other's objects.
    """
    suffix = tmp_path.name.replace("_", "-").lower()[-20:].strip("-")
    return {
        "REDIS_URL": redis_url,
        "MINIO_ENDPOINT": s3_server.url,
        "MINIO_ACCESS_KEY": "minioadmin",
        "MINIO_SECRET_KEY": "minioadmin",
        "QDRANT_URL": "embedded",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "BUCKET_RAW": f"raw-{suffix}"[:63],
        "BUCKET_CROPS": f"crops-{suffix}"[:63],
        "BUCKET_THUMBS": f"thumbs-{suffix}"[:63],
        "BUCKET_METADATA": f"meta-{suffix}"[:63],
    }


@pytest.fixture(scope="session")
def faces_manifest() -> dict[str, dict]:
    manifest = FACES_DIR / "MANIFEST.json"
    if not manifest.exists():
        pytest.skip(f"test photos not found at {FACES_DIR} (set FACEPIPE_FACES_DIR)")
    return json.loads(manifest.read_text())["photos"]


# --- face models (issue #3): fetched once into MODELS_DIR, loaded once per session ---


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """MODELS_DIR (default ~/.cache/facepipe/models) with every fetchable pack in it.

    Runs the `make models` fetch when a file is missing or wrong; a no-op (hash check) otherwise.
    """
    from facepipe.core.settings import load_settings
    from facepipe.vision.models.fetch import ensure_models

    directory = load_settings().models_dir.expanduser()
    ensure_models(directory)
    return directory


class LoadedPack:
    """A model pack's detector and embedder, loaded (CPU, one ORT thread: the machine is shared)."""

    def __init__(self, pack_name: str, models_dir: Path) -> None:
        from facepipe.core.settings import load_settings
        from facepipe.vision.models import create_detector, create_embedder

        self.settings = load_settings(
            model_pack=pack_name, models_dir=models_dir, inference_device="cpu", ort_intra_op_threads=1
        )
        self.detector = create_detector(self.settings)
        self.detector.load()
        self.embedder = create_embedder(self.settings)
        self.embedder.load()
        self.pack = self.detector.pack


@pytest.fixture(scope="session")
def buffalo_sc(models_dir: Path) -> LoadedPack:
    return LoadedPack("buffalo_sc", models_dir)


@pytest.fixture(scope="session")
def load_model_pack(models_dir: Path):
    """Factory: ``load_model_pack("opencv_yunet_sface")`` -> LoadedPack."""
    return lambda pack_name: LoadedPack(pack_name, models_dir)


@pytest.fixture(scope="session")
def faces_dir(faces_manifest: dict[str, dict]) -> Path:
    return FACES_DIR


@pytest.fixture(scope="session")
def photos(faces_manifest: dict[str, dict], faces_dir: Path) -> dict[str, np.ndarray]:
    """Every manifest photo decoded with the pipeline's own decoder (BGR)."""
    from facepipe.vision.imaging import ImageLimits, decode_image

    limits = ImageLimits(max_bytes=50 * 1024 * 1024, max_pixels=60_000_000, max_side=16_384)
    return {name: decode_image((faces_dir / name).read_bytes(), limits) for name in faces_manifest}


# --- Kubernetes API emulator (facepipe.sim.emulator): shared by the operator and sim tests ---

CRD_PATH = REPO_ROOT / "crds" / "facepipelines.facepipe.io.yaml"


@pytest.fixture(scope="session")
def kube_emulator() -> Iterator[EmulatorServer]:
    from facepipe.sim.emulator import EmulatorServer

    with EmulatorServer([CRD_PATH]) as server:
        yield server


@pytest.fixture(scope="session")
def kubeconfig(kube_emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from facepipe.sim.emulator import write_kubeconfig

    return write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig", kube_emulator.url)


@pytest.fixture(scope="session")
def kube(kubeconfig: Path) -> Iterator[KubeApi]:
    from facepipe.operator.kube import KubeApi

    api = KubeApi.from_environment(str(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace(kube: KubeApi) -> Iterator[str]:
    """A fresh namespace; its FacePipelines are deleted afterwards so timers stop working on them."""
    from facepipe.operator.kube import FACE_PIPELINE

    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    for pipeline in kube.list(FACE_PIPELINE, name):
        kube.delete(FACE_PIPELINE, name, pipeline["metadata"]["name"])


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI every dependency is installed, so a skipped test there hides a missing feature: fail."""
    if os.environ.get("CI") != "true" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(
            f"CI=true: {len(skipped)} test(s) skipped; CI must have everything they need", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
