"""A real Redis Cluster on loopback: ``redis-server --cluster-enabled yes`` nodes joined by
``redis-cli --cluster create`` (for ``facepipe up --redis-cluster N`` and the tests).

Each node listens on a port P and on P+10000 (the cluster bus). With ``persist`` each node keeps
an append-only file and its ``nodes.conf`` under ``<data_dir>/<port>/``, and the ports are kept in
``<data_dir>/ports``: a later start on the same data dir brings the same cluster back.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import key_slot

from facepipe.cli.localservers import ServerProcess, start_redis
from facepipe.cli.ports import with_free_ports
from facepipe.cli.programs import find_program

BUS_OFFSET = 10000
PORTS_FILE = "ports"


def redis_cli_binary() -> str:
    """redis-cli (it creates the cluster), Redis 7 or newer: facepipe.cli.programs."""
    return find_program("redis-cli")


@dataclass
class LocalRedisCluster:
    """The nodes of a local cluster (masters first as created; a failover changes roles)."""

    nodes: list[ServerProcess]
    masters: int
    replicas: int
    data_dir: Path

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed (a client finds the cluster from any)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=10)

    def running(self) -> bool:
        return all(node.running() for node in self.nodes)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, port: int) -> ServerProcess:
        return next(node for node in self.nodes if node.port == port)

    def master_port_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now (asked of a live node)."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.running():
                continue
            with contextlib.suppress(redis.RedisError):
                for start, end, master, *_replicas in self.client(node.port).cluster("SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
        raise RuntimeError(f"no live node knows who serves slot {slot}")

    def wait_healthy(self, timeout: float = 90.0) -> None:
        """Until every live node says cluster_state:ok, knows every node, and every slot is served."""
        live = [node for node in self.nodes if node.running()]
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                infos = [_cluster_info(self.client(node.port)) for node in live]
                if all(
                    info.get("cluster_state") == "ok"
                    and info.get("cluster_slots_ok") == "16384"
                    and int(info.get("cluster_known_nodes", 0)) >= len(self.nodes)
                    for info in infos
                ) and self._replicas_synced(live):
                    return
                last = str(infos)
            except redis.RedisError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise TimeoutError(f"Redis Cluster not healthy within {timeout}s: {last[:500]}")

    def _replicas_synced(self, live: list[ServerProcess]) -> bool:
        links = [self.client(node.port).info("replication") for node in live]
        replicas = [link for link in links if link.get("role") == "slave"]
        return len(replicas) >= (self.replicas * self.masters if len(live) == len(self.nodes) else 0) and all(
            link.get("master_link_status") == "up" for link in replicas
        )


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    text = client.execute_command("CLUSTER", "INFO")
    text = text.decode() if isinstance(text, bytes) else str(text)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _start_node(data_dir: Path, port: int | None, persist: bool, node_timeout_ms: int) -> ServerProcess:
    """A node on ``port``, or on a free port P with P+BUS_OFFSET free too (its cluster bus)."""
    if port is None:
        start = functools.partial(_start_node, data_dir, persist=persist, node_timeout_ms=node_timeout_ms)
        return with_free_ports(start, offsets=(0, BUS_OFFSET))
    cluster_args = [
        "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(node_timeout_ms),
        # A replica's first full sync starts at once (the default waits 5 s for more replicas):
        # until it has synced, it cannot take over from its master.
        "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip
    return start_redis(data_dir / str(port), port, persist, extra_args=cluster_args)


def start_redis_cluster(
    data_dir: Path,
    masters: int = 3,
    replicas: int = 0,
    *,
    persist: bool = False,
    node_timeout_ms: int = 2000,
    timeout: float = 90.0,
) -> LocalRedisCluster:
    """``masters`` masters with ``replicas`` replicas each, cluster state ok, all slots served.

    ``node_timeout_ms``: how long a master may be unreachable before its replica is promoted.
    """
    if masters < 3:
        raise ValueError("a Redis Cluster needs at least 3 masters")
    data_dir.mkdir(parents=True, exist_ok=True)
    ports_file = data_dir / PORTS_FILE
    total = masters * (1 + replicas)
    known = [int(p) for p in ports_file.read_text().split()] if ports_file.exists() else []
    existing = len(known) == total and all((data_dir / str(p) / "nodes.conf").exists() for p in known)
    nodes: list[ServerProcess] = []
    cluster = LocalRedisCluster(nodes, masters, replicas, data_dir)
    try:
        for port in known if existing else [None] * total:
            nodes.append(_start_node(data_dir, port, persist, node_timeout_ms))
        ports = [node.port for node in nodes]
        if not existing:
            _create(ports, replicas, timeout)
            if persist:
                ports_file.write_text(" ".join(map(str, ports)))
        cluster.wait_healthy(timeout)
    except Exception:
        cluster.stop()
        raise
    return cluster


def _create(ports: list[int], replicas: int, timeout: float) -> None:
    args = [redis_cli_binary(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports)]
    args += ["--cluster-replicas", str(replicas), "--cluster-yes"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
        output = done.stdout[-800:] + done.stderr
        raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}): {output}")
