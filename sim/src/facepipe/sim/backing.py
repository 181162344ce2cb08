"""The servers a FacePipeline points at, run by the simulation and published as Services.

One redis-server, one SeaweedFS (the S3 API, credentials minioadmin/minioadmin) and the
Qdrant REST stand-in (facepipe.sim.qdrant_rest) run on the host's 127.0.0.1; each is a
Service without a selector whose Endpoints name that address, in every namespace asked
for, under the names the examples and charts use. The table:

=========  ======  ===================================  =========================================
Service    port    server                               used by
=========  ======  ===================================  =========================================
redis      6379    redis-server                         ``redis://redis:6379/0`` (examples/),
                                                        ``redis://redis.<ns>.svc:6379/0`` (charts)
minio      9000    SeaweedFS S3 (minioadmin/minioadmin)  ``minio:9000``, ``minio.<ns>.svc:9000``
qdrant     6333    Qdrant REST stand-in                 ``http://qdrant:6333``, ``http://qdrant.<ns>.svc:6333``
=========  ======  ===================================  =========================================
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from facepipe.cli.localservers import ServerProcess, start_redis, start_seaweedfs
from facepipe.cli.ports import launch, listening_socket
from facepipe.sim.apiclient import ENDPOINTS, SERVICE, Api, ApiError
from facepipe.sim.hostprocs import Guardian

LABELS = {"app.kubernetes.io/managed-by": "facepipe-sim", "facepipe.io/sim-backing": "true"}


@dataclass(frozen=True)
class BackingService:
    name: str  # the Service's name in each namespace
    port: int  # the Service's port
    port_name: str
    server: str  # key of the running server


BACKING_SERVICES = (
    BackingService("redis", 6379, "redis", "redis"),
    BackingService("minio", 9000, "s3", "s3"),
    BackingService("qdrant", 6333, "http", "qdrant"),
)


def start_qdrant_stand_in(data: Path, log_path: Path, port: int = 0) -> ServerProcess:
    """The Qdrant REST stand-in (its own process, its collections in ``data``) on a socket bound
    here, on ``port`` (0: any free one), so no other server can take it meanwhile; up once it
    answers a collection listing."""
    sock = listening_socket(port=port)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    def lists_collections() -> bool:
        with urllib.request.urlopen(f"{url}/collections", timeout=5) as answer:
            return bool(answer.status == 200)

    command = [
        sys.executable,
        "-m",
        "facepipe.sim.qdrant_rest",
        "--path",
        str(data),
        "--fd",
        str(sock.fileno()),
    ]
    proc = launch(
        "the Qdrant REST stand-in",
        command,
        log_path,
        [port],
        ready=lists_collections,
        timeout=120,
        handed=sock,
    )
    return ServerProcess("qdrant", proc, port, data, log_path, {"url": url})


class BackingServers:
    def __init__(self, folder: Path, guardian: Guardian) -> None:
        self.folder = folder
        self.guardian = guardian
        self.servers: dict[str, ServerProcess] = {}

    async def start(self) -> None:
        starters = {
            "redis": lambda: start_redis(self.folder / "redis"),
            "s3": lambda: start_seaweedfs(self.folder / "seaweedfs"),
            "qdrant": lambda: start_qdrant_stand_in(
                self.folder / "qdrant" / "data", self.folder / "qdrant" / "qdrant.log"
            ),
        }
        for key, starter in starters.items():
            server = await asyncio.to_thread(starter)
            self.servers[key] = server
            self.guardian.watch(server.proc.pid)  # started with a new session: pgid == pid

    async def publish(self, api: Api, namespace: str) -> None:
        """The Services (and their Endpoints) in ``namespace``; idempotent."""
        for entry in BACKING_SERVICES:
            server = self.servers[entry.server]
            service = {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": entry.name, "namespace": namespace, "labels": dict(LABELS)},
                "spec": {"ports": [{"name": entry.port_name, "port": entry.port, "protocol": "TCP"}]},
            }
            endpoints = {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": entry.name, "namespace": namespace, "labels": dict(LABELS)},
                "subsets": [
                    {
                        "addresses": [{"ip": "127.0.0.1"}],
                        "ports": [{"name": entry.port_name, "port": server.port, "protocol": "TCP"}],
                    }
                ],
            }
            for kind, body in ((ENDPOINTS, endpoints), (SERVICE, service)):
                try:
                    await api.create(kind, body)
                except ApiError as exc:
                    if exc.status != 409:
                        raise

    async def stop(self) -> None:
        for server in self.servers.values():
            await asyncio.to_thread(server.stop)
            self.guardian.forget(server.proc.pid)

    def url(self, key: str) -> str:
        return self.servers[key].url
