"""The real pipeline, end to end: real redis-server and SeaweedFS, the three services as processes
(``python -m facepipe.detector|embedder|indexer``), Qdrant in embedded mode (one indexer process
owns its folder), images already in S3 as a crawler leaves them.

A run XADDs one ingest message per image for a fresh tenant (so dedup, S3 keys and points of
earlier runs do not interfere) and ends when that tenant's ``worker_msgs_acked`` (counted where
the last stream is acked: the image went through all three stages) plus its DLQ entries reach
the number of images. CPU seconds of every process are sampled around the run (psutil).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import redis

from bench.common import rounded
from bench.images import REPO_ROOT, BenchImage
from facepipe.cli.localservers import ServerProcess, start_redis, start_seaweedfs
from facepipe.cli.supervisor import die_with_parent
from facepipe.core.settings import Settings, load_settings
from facepipe.core.stats import TIMINGS, Stats
from facepipe.store.storage import ObjectStore

SERVICES = ("detector", "embedder", "indexer")
READY_LINE = "Worker started, waiting for messages..."
RAW_PREFIX = "bench"


@dataclass
class PipelineRun:
    tenant: str
    images: int
    seconds: float
    acked: int
    dlq: int
    faces_indexed: int
    faces_dup_skipped: int
    faces_rejected: int
    cpu_seconds: dict[str, float]  # per process, plus "machine" (every core, every process)
    stage_ms: dict[str, float]  # summed stage timings of the run (see stage_timings)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class PipelineConfig:
    pack: str = "buffalo_sc"
    device: str = "cpu"
    ort_threads: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    # Processes per service; the indexer stays at one (embedded Qdrant: one process per folder).
    replicas: dict[str, int] = field(default_factory=dict)
    # Proposed code changes applied in memory (bench/whatif.py), to measure them end to end.
    whatif: tuple[str, ...] = ()
    # Finished stream entries are kept this long: _message_timings reads the embedded entries
    # after a run. The memory figure runs with 0 (the default of the services).
    stream_retention_ms: int = 3_600_000

    def command(self, service: str) -> list[str]:
        if self.whatif:
            return [
                sys.executable,
                "-m",
                "bench.whatif",
                "--patches",
                ",".join(self.whatif),
                f"facepipe.{service}",
            ]
        return [sys.executable, "-m", f"facepipe.{service}"]

    def processes(self) -> list[str]:
        names = []
        for service in SERVICES:
            count = 1 if service == "indexer" else max(1, self.replicas.get(service, 1))
            names += [service if n == 0 else f"{service}.{n + 1}" for n in range(count)]
        return names

    def env(self) -> dict[str, str]:
        return {
            "MODEL_PACK": self.pack,
            "INFERENCE_DEVICE": self.device,
            "ORT_INTRA_OP_THREADS": str(self.ort_threads),
            "STREAM_RETENTION_MS": str(self.stream_retention_ms),
            **self.extra_env,
        }


class RunningPipeline:
    """Servers + the three services; ``with RunningPipeline(dir, config, images) as p: p.run(...)``."""

    def __init__(self, workdir: Path, config: PipelineConfig, images: Sequence[BenchImage]) -> None:
        self.workdir = workdir
        self.config = config
        self.images = list(images)
        self.servers: list[ServerProcess] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {}
        self.settings: Settings | None = None
        self.client: redis.Redis | None = None

    def __enter__(self) -> RunningPipeline:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 180.0) -> None:
        redis_server = start_redis(self.workdir / "redis")
        self.servers.append(redis_server)
        s3_server = start_seaweedfs(self.workdir / "seaweedfs")
        self.servers.append(s3_server)
        self.env = {
            "REDIS_URL": redis_server.url,
            "MINIO_ENDPOINT": s3_server.url,
            "MINIO_ACCESS_KEY": "minioadmin",
            "MINIO_SECRET_KEY": "minioadmin",
            "QDRANT_URL": "embedded",
            "QDRANT_PATH": str(self.workdir / "qdrant"),
            "METRICS_PORT": "0",
            "LOG_LEVEL": "INFO",
            **self.config.env(),
        }
        self.settings = load_settings(
            **{key.lower(): value for key, value in self.env.items() if key.lower() in Settings.model_fields}
        )
        self.client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        store = ObjectStore(self.settings)
        store.ensure_buckets()
        for image in self.images:  # the crawler's part, done before any clock starts
            store.put_bytes(self.settings.bucket_raw, self.raw_key(image), image.data, "image/jpeg")
        child_env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        for name in self.config.processes():
            service = name.split(".")[0]
            log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
            self.procs[name] = subprocess.Popen(
                self.config.command(service),
                cwd=REPO_ROOT,
                env={**child_env, "REDIS_CONSUMER_NAME": f"bench-{name}"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,  # a prctl resolved at import: safe between fork and exec
            )
            log.close()
        deadline = time.monotonic() + timeout_s
        for name in self.procs:
            self._wait_ready(name, deadline)

    def _wait_ready(self, name: str, deadline: float) -> None:
        log_path = self.workdir / f"{name}.log"
        while time.monotonic() < deadline:
            if READY_LINE in log_path.read_text(errors="replace"):
                return
            if self.procs[name].poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {self.procs[name].returncode}:\n{self.log_tail(name)}"
                )
            time.sleep(0.1)
        raise TimeoutError(f"{name} not ready in time:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        if self.client is not None:
            self.client.close()
            self.client = None
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    # --- runs ----------------------------------------------------------------------------

    @staticmethod
    def raw_key(image: BenchImage) -> str:
        return f"{RAW_PREFIX}/{image.sha256}.jpg"

    def processes(self) -> dict[str, psutil.Process]:
        found = {name: psutil.Process(proc.pid) for name, proc in self.procs.items()}
        for server in self.servers:
            found[server.name] = psutil.Process(server.proc.pid)
        found["bench"] = psutil.Process(os.getpid())
        return found

    def run(
        self, tenant: str, images: Sequence[BenchImage] | None = None, timeout_s: float = 600.0
    ) -> PipelineRun:
        assert self.client is not None and self.settings is not None, "start() first"
        images = list(images if images is not None else self.images)
        settings, client = self.settings, self.client
        stats = Stats(client)
        messages = [json.dumps(self._ingest(tenant, image)) for image in images]
        timings_before = stats.snapshot()["timings_ms"]
        cpu_before = _cpu_seconds(self.processes())
        started = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for message in messages:
            pipe.xadd(settings.ingest_stream, {"message": message})
        pipe.execute()
        counters_key = stats.counters_key(tenant)
        deadline = time.monotonic() + timeout_s
        while True:
            acked, dlq = (
                int(v or 0) for v in client.hmget(counters_key, "worker_msgs_acked", "worker_msgs_dlq")
            )
            if acked + dlq >= len(images):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"pipeline run {tenant}: {acked} acked, {dlq} dead-lettered of {len(images)} "
                    f"after {timeout_s}s; detector log:\n{self.log_tail('detector')}"
                )
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} died during the run:\n{self.log_tail(name)}")
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        cpu_after = _cpu_seconds(self.processes())
        snapshot = stats.snapshot(tenant)["counters"]
        timings_after = stats.snapshot()["timings_ms"]
        return PipelineRun(
            tenant=tenant,
            images=len(images),
            seconds=seconds,
            acked=acked,
            dlq=dlq,
            faces_indexed=snapshot["faces_processed"],
            faces_dup_skipped=snapshot["faces_dup_skipped"],
            faces_rejected=snapshot["faces_rejected"],
            cpu_seconds={name: rounded(cpu_after[name] - cpu_before.get(name, 0.0)) for name in cpu_after},
            stage_ms={
                name: rounded(timings_after[name]["total"] - timings_before[name]["total"], 1)
                for name in TIMINGS
            }
            | self._message_timings(tenant),
        )

    def _ingest(self, tenant: str, image: BenchImage) -> dict[str, object]:
        assert self.settings is not None
        return {
            "image_sha256": image.sha256,
            "bucket": self.settings.bucket_raw,
            "key": self.raw_key(image),
            "tenant_id": tenant,
            "site": "bench.local",
            "url": f"https://bench.local/{image.name}",
            "image_phash": None,
            "face_hints": None,
        }

    def _message_timings(self, tenant: str) -> dict[str, float]:
        """download/decode as the detector reported them in this tenant's embedded messages."""
        assert self.client is not None and self.settings is not None
        totals = {"download": 0.0, "decode": 0.0}
        for _id, fields in _stream_entries(self.client, self.settings.embedded_stream):
            payload = json.loads(fields.get("message", "{}"))
            if payload.get("ingest", {}).get("tenant_id") != tenant:
                continue
            for name in totals:
                totals[name] += float(payload.get("timings_ms", {}).get(name, 0.0))
        return {name: rounded(value, 1) for name, value in totals.items()}


def _stream_entries(client: redis.Redis, stream: str, page: int = 500) -> Iterator[tuple[str, dict]]:
    start = "-"
    while True:
        entries = client.xrange(stream, min=start, count=page)
        yield from entries
        if len(entries) < page:
            return
        start = "(" + entries[-1][0]


def _cpu_seconds(processes: dict[str, psutil.Process]) -> dict[str, float]:
    seconds: dict[str, float] = {}
    for name, proc in processes.items():
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            seconds[name] = times.user + times.system + times.children_user + times.children_system
    machine = psutil.cpu_times()
    seconds["machine"] = sum(machine) - machine.idle - getattr(machine, "iowait", 0.0)
    return seconds


def cpu_shares(run: PipelineRun) -> dict[str, object]:
    """Where the CPU went during a run: each service's share of our processes' CPU seconds."""
    ours: dict[str, float] = {}
    for name, value in run.cpu_seconds.items():
        if name != "machine":
            ours[name.split(".")[0]] = ours.get(name.split(".")[0], 0.0) + value
    total = sum(ours.values())
    machine = run.cpu_seconds.get("machine", 0.0)
    return {
        "share": {name: rounded(value / total) if total else 0.0 for name, value in ours.items()},
        "cores_busy": {name: rounded(value / run.seconds, 2) for name, value in ours.items()},
        "pipeline_cores_busy": rounded(total / run.seconds, 2),
        "machine_cores_busy": rounded(machine / run.seconds, 2),
        "other_processes_cores_busy": rounded(max(0.0, machine - total) / run.seconds, 2),
    }
