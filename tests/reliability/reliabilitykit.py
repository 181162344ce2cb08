"""The reliability suite's harness: real servers, each service as its own process, outcome counts.

:class:`Stack` starts a real redis-server (append-only file, so it can be stopped and
started again without losing the streams), a real SeaweedFS S3 server, and a Qdrant REST
server (``facepipe.sim.qdrant_rest``: an embedded engine behind Qdrant's HTTP API), then
``python -m facepipe.detector|embedder|indexer|ops_api`` processes against them. It
injects the faults (SIGKILL, SIGTERM, stopping a server) and counts what came out:
Qdrant points by payload, S3 artifacts, DLQ entries, stream depth, /stats.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from minio import Minio
from qdrant_client import QdrantClient
from reliability_images import GeneratedImage

from facepipe.cli.localservers import ServerProcess, start_redis, start_seaweedfs
from facepipe.cli.ports import listening_socket
from facepipe.core.settings import Settings, load_settings
from facepipe.ops_api.depth import pipeline_depths
from facepipe.sim.backing import start_qdrant_stand_in
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors.naming import family

HERE = Path(__file__).resolve().parent
READY_LINE = "Worker started, waiting for messages..."
SERVICE_MODULES = {
    "detector": "facepipe.detector",
    "embedder": "facepipe.embedder",
    "indexer": "facepipe.indexer",
    "ops-api": "facepipe.ops_api",
}


def scale() -> float:
    """RELIABILITY_SCALE: 1 = the full size (`make reliability`); CI and plain pytest run 0.15."""
    return float(os.environ.get("RELIABILITY_SCALE", "0.15"))


def scaled(full: int, minimum: int) -> int:
    return max(minimum, round(full * scale()))


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size of a live process (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Service:
    kind: str
    proc: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def consumer(self) -> str:
        """The runtime's default consumer name: pipe-{hostname}-{pid}."""
        return f"pipe-{socket.gethostname()}-{self.pid}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_LINE in self.log():
                return
            if not self.alive():
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.kind} not ready within {timeout}s:\n{self.log()[-3000:]}")

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 120.0) -> int:
        """SIGTERM; the exit code (a hang past ``timeout`` is killed and reported as -9)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return -9


class Stack:
    """Servers and service processes of one scenario, in ``root``."""

    def __init__(self, root: Path, models_dir: Path, **overrides: str) -> None:
        self.root = root
        self.models_dir = models_dir
        self.overrides = {key: str(value) for key, value in overrides.items()}
        self.services: list[Service] = []
        self.redis_server: ServerProcess | None = None
        self.s3_server: ServerProcess | None = None
        self.qdrant_server: ServerProcess | None = None
        # Each server's port is its own pick at its first start, and the same after a restart.
        self.qdrant_port = 0
        self.redis_port: int | None = None
        self.ops_port = 0
        self._s3_port: int | None = None
        self.spawned: Counter[str] = Counter()

    # ------------------------------------------------------------------ servers
    def start(self) -> Stack:
        self.start_redis()
        self.start_s3()
        self.start_qdrant()
        ObjectStore(self.settings).ensure_buckets()
        return self

    def start_redis(self) -> None:
        self.redis_server = start_redis(self.root / "redis", port=self.redis_port, persist=True)
        self.redis_port = self.redis_server.port

    def start_s3(self) -> None:
        self.s3_server = start_seaweedfs(self.root / "s3", port=self._s3_port)
        self._s3_port = self.s3_server.port

    def start_qdrant(self) -> None:
        self.qdrant_server = start_qdrant_stand_in(
            self.root / "qdrant", self.root / "qdrant.log", self.qdrant_port
        )
        self.qdrant_port = self.qdrant_server.port

    def stop_qdrant(self) -> None:
        if self.qdrant_server is not None and self.qdrant_server.running():
            os.killpg(self.qdrant_server.proc.pid, signal.SIGKILL)
            self.qdrant_server.proc.wait(timeout=30)

    def stop(self) -> None:
        for service in self.services:
            if service.alive():
                service.kill9()
        self.stop_qdrant()
        for server in (self.s3_server, self.redis_server):
            if server is not None and server.running():
                # Teardown: nothing to keep, so no graceful stop (SeaweedFS can take 20 s for one).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(timeout=30)

    # --------------------------------------------------------------- settings
    def env(self, **extra: str) -> dict[str, str]:
        assert self.s3_server is not None
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONUNBUFFERED": "1",
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "MINIO_ENDPOINT": f"127.0.0.1:{self._s3_port}",
            "MINIO_ACCESS_KEY": "minioadmin",
            "MINIO_SECRET_KEY": "minioadmin",
            "QDRANT_URL": f"http://127.0.0.1:{self.qdrant_port}",
            "QDRANT_COLLECTION": "faces_reliability",
            "MODELS_DIR": str(self.models_dir),
            "MODEL_PACK": "buffalo_sc",
            "INFERENCE_DEVICE": "cpu",
            "ORT_INTRA_OP_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MAX_WORKER_CONCURRENCY": "2",
            "WORKER_BATCH_SIZE": "8",
            "READ_BLOCK_MS": "500",
            "CLAIM_IDLE_MS": "8000",
            "MAX_DELIVERIES": "5",
            "RETRY_BACKOFF_INITIAL_S": "0.2",
            "RETRY_BACKOFF_MAX_S": "2",
            "METRICS_PORT": "0",
            "LOG_LEVEL": "INFO",
        }
        if self.ops_port:
            env["OPS_API_PORT"] = str(self.ops_port)
        env.update(self.overrides)
        env.update(extra)
        return env

    @property
    def settings(self) -> Settings:
        env = self.env()
        names = {name for name in env if name.isupper()}
        saved = {name: os.environ.get(name) for name in names}
        try:
            os.environ.update(env)
            return load_settings()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def redis(self) -> redis.Redis:
        return redis.Redis(
            port=self.redis_port, decode_responses=True, encoding_errors="surrogateescape", socket_timeout=10
        )

    def minio(self) -> Minio:
        return Minio(
            f"127.0.0.1:{self._s3_port}", access_key="minioadmin", secret_key="minioadmin", secure=False
        )

    # --------------------------------------------------------------- services
    def spawn(
        self,
        kind: str,
        *,
        module: str | None = None,
        script: Path | None = None,
        args: Iterable[str] = (),
        wait: bool = True,
        pass_fds: tuple[int, ...] = (),
        **extra_env: str,
    ) -> Service:
        self.spawned[kind] += 1
        log_path = self.root / f"{kind}-{self.spawned[kind]}.log"
        command = (
            [sys.executable, str(script)]
            if script
            else [sys.executable, "-m", module or SERVICE_MODULES[kind]]
        )
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [*command, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(**extra_env),
            start_new_session=True,
            cwd=self.root,
            pass_fds=pass_fds,
        )
        log.close()
        service = Service(kind, proc, log_path)
        self.services.append(service)
        if wait and kind != "ops-api":
            service.wait_ready()
        return service

    def spawn_pipeline(self, **extra_env: str) -> dict[str, Service]:
        return {kind: self.spawn(kind, **extra_env) for kind in ("detector", "embedder", "indexer")}

    def spawn_ops_api(self) -> Service:
        """The ops-api serving a socket bound here: the port it had before, else any free one."""
        with listening_socket(port=self.ops_port) as sock:
            self.ops_port = sock.getsockname()[1]
            service = self.spawn("ops-api", args=["--fd", str(sock.fileno())], pass_fds=(sock.fileno(),))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{self.ops_port}/", timeout=2)
                return service
            if not service.alive():
                raise RuntimeError(f"ops-api exited:\n{service.log()[-3000:]}")
            time.sleep(0.3)
        raise TimeoutError("ops-api did not answer")

    def ready(self) -> tuple[int, dict[str, Any]]:
        response = httpx.get(f"http://127.0.0.1:{self.ops_port}/ready", timeout=15)
        return response.status_code, response.json()

    def live(self, kind: str) -> list[Service]:
        return [s for s in self.services if s.kind == kind and s.alive()]

    # ---------------------------------------------------------------- inputs
    def upload(self, images: Iterable[GeneratedImage]) -> None:
        store = ObjectStore(self.settings)
        for image in images:
            store.put_bytes(self.settings.bucket_raw, image.key, image.data, image.content_type)

    def publish(self, images: Iterable[GeneratedImage]) -> list[str]:
        """XADD one Phase 3 ingest message per image (uploaded first); the entry ids."""
        images = list(images)
        self.upload(images)
        client = self.redis()
        pipe = client.pipeline(transaction=False)
        for image in images:
            pipe.xadd(
                self.settings.ingest_stream, {"message": json.dumps(ingest_payload(self.settings, image))}
            )
        return [str(entry_id) for entry_id in pipe.execute()]

    # --------------------------------------------------------------- outcome
    def added(self, stream: str) -> int:
        """How many entries were ever added to ``stream`` (its length no longer says: workers trim
        what they finished)."""
        client = self.redis()
        return int(client.xinfo_stream(stream)["entries-added"]) if client.exists(stream) else 0

    def depths(self) -> dict[str, dict[str, int]]:
        group = self.settings.redis_group_name
        out: dict[str, dict[str, int]] = {}
        for depth in pipeline_depths(self.redis(), self.settings.pipeline_streams):
            mine = [g for g in depth.groups if g.name == group]
            lag = mine[0].lag if mine else depth.length
            pending = mine[0].pending if mine else 0
            out[depth.stream] = {
                "length": depth.length,
                "added": self.added(depth.stream),
                "lag": lag,
                "pending": pending,
                "dlq": depth.dlq_length,
            }
        return out

    def wait_drained(
        self,
        timeout: float,
        expected_ingest: int | None = None,
        while_waiting: Callable[[], None] | None = None,
    ) -> dict[str, dict[str, int]]:
        """Until every stream has no lag and nothing pending, twice in a row; the last depths."""
        deadline = time.monotonic() + timeout
        calm = 0
        depths: dict[str, dict[str, int]] = {}
        while time.monotonic() < deadline:
            if while_waiting is not None:
                while_waiting()
            with contextlib.suppress(redis.RedisError):
                depths = self.depths()
                ingest = depths.get(self.settings.ingest_stream, {})
                done = all(d["lag"] == 0 and d["pending"] == 0 for d in depths.values())
                done = done and (expected_ingest is None or ingest.get("added") == expected_ingest)
                calm = calm + 1 if done else 0
                if calm >= 3:
                    return depths
            time.sleep(1.0)
        raise TimeoutError(f"pipeline not drained within {timeout}s: {depths}\n{self.log_tails()}")

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {s.kind} pid {s.pid} ---\n{s.log()[-chars:]}" for s in self.services[-6:])

    def points(self) -> list[dict[str, Any]]:
        """Every point's payload in the collection family (a collection per model pack), all tenants."""
        client = QdrantClient(
            url=f"http://127.0.0.1:{self.qdrant_port}", timeout=30, check_compatibility=False
        )
        try:
            listed = [c.name for c in client.get_collections().collections]
            names = family(self.settings.qdrant_collection, listed)
            payloads: list[dict[str, Any]] = []
            for name in names:
                offset: Any = None
                while True:
                    records, offset = client.scroll(
                        name, limit=512, offset=offset, with_payload=True, with_vectors=False
                    )
                    payloads.extend({**(r.payload or {}), "_id": str(r.id)} for r in records)
                    if offset is None:
                        break
            return payloads
        finally:
            client.close()

    def dlq(self) -> dict[str, list[dict[str, str]]]:
        client = self.redis()
        return {
            stream: [fields for _id, fields in client.xrange(f"{stream}:dlq")]
            for stream in self.settings.pipeline_streams
        }

    def object_count(self, bucket: str) -> int:
        return sum(1 for _ in self.minio().list_objects(bucket, recursive=True))

    def stats(self) -> dict[str, int]:
        raw = self.redis().hgetall("stats:counters")
        return {key: int(value) for key, value in raw.items()}


def ingest_payload(settings: Settings, image: GeneratedImage) -> dict[str, Any]:
    return {
        "image_sha256": image.sha256,
        "bucket": settings.bucket_raw,
        "key": image.key,
        "tenant_id": image.tenant,
        "site": "reliability.test",
        "url": f"https://reliability.test/{image.sha256}.jpg",
        "image_phash": None,
        "face_hints": None,
    }


@dataclass
class Tally:
    """What a run produced, against the ground truth."""

    messages: int
    expected: int
    indexed: int
    duplicates: int
    lost: int
    unexpected: int
    leaks: int
    dlq: int
    crops: int

    def columns(self, leaks: int | None = None) -> dict[str, int]:
        """This run's columns of the figures table (``leaks`` overrides when a test counts more)."""
        return {
            "faces expected": self.expected,
            "indexed": self.indexed,
            "duplicates": self.duplicates,
            "lost": self.lost,
            "leaks": self.leaks if leaks is None else leaks,
            "DLQ": self.dlq,
        }


def tally(stack: Stack, images: list[GeneratedImage]) -> tuple[Tally, list[str]]:
    """Compare Qdrant points with the expected faces; also a list of human-readable problems."""
    expected = {(img.tenant, img.sha256, face.index): face.phash for img in images for face in img.faces}
    owned = {(img.tenant, img.sha256) for img in images}  # an image may belong to several tenants
    points = stack.points()
    keys = Counter((p.get("tenant_id"), p.get("image_sha256"), p.get("face_index")) for p in points)
    problems: list[str] = []
    duplicates = sum(n - 1 for n in keys.values() if n > 1)
    found = set(keys)
    lost = sorted(set(expected) - found)
    unexpected = sorted(k for k in found - set(expected) if k[:2] in owned)
    leaks = sorted(k for k in found if k[:2] not in owned)  # a face under a tenant that never sent it
    for point in points:
        key = (point.get("tenant_id"), point.get("image_sha256"), point.get("face_index"))
        if key in expected and point.get("phash") != expected[key]:
            problems.append(
                f"face {key} indexed with pHash {point.get('phash')}, ground truth {expected[key]}"
            )
    if lost:
        problems.append(f"lost faces: {lost[:10]}")
    if unexpected:
        problems.append(f"faces not in the ground truth: {unexpected[:10]}")
    if leaks:
        problems.append(f"points under a foreign tenant: {leaks[:10]}")
    dlq = sum(len(entries) for entries in stack.dlq().values())
    crops = stack.object_count(stack.settings.bucket_crops)
    return Tally(
        messages=len(images),
        expected=len(expected),
        indexed=len(found & set(expected)),
        duplicates=duplicates,
        lost=len(lost),
        unexpected=len(unexpected),
        leaks=len(leaks),
        dlq=dlq,
        crops=crops,
    ), problems


# ------------------------------------------------------------------ figures
FIGURE_COLUMNS = (
    "scenario",
    "messages",
    "faces expected",
    "indexed",
    "duplicates",
    "lost",
    "leaks",
    "DLQ",
    "verdict",
    "notes",
)
FIGURES: list[dict[str, Any]] = []


def record(scenario: str, verdict: bool, **values: Any) -> None:
    """Add one row to the figures table printed at the end of the session."""
    FIGURES.append({"scenario": scenario, "verdict": "PASS" if verdict else "FAIL", **values})


def figures_markdown() -> str:
    lines = ["| " + " | ".join(FIGURE_COLUMNS) + " |", "|" + "---|" * len(FIGURE_COLUMNS)]
    for row in sorted(FIGURES, key=lambda r: str(r["scenario"])):  # in scenario order, whatever ran first
        lines.append("| " + " | ".join(str(row.get(column, "–")) for column in FIGURE_COLUMNS) + " |")
    return "\n".join(lines)
