"""Redis Cluster figures: dedup checks and pipeline stream messages with 1 Redis and with a
3-master Redis Cluster, many tenants, side by side in one run.

How capacity is measured: on this machine the clients and three redis-servers share two cores,
so wall-clock rates say more about the clients than about Redis. As the dedup figure does, each
server's capacity is taken from its own main-thread CPU (INFO cpu, user + sys): the work is split
over the masters by tenant hash tag, and the busiest master saturates first, so

    capacity(N masters) = operations / max over masters (main-thread CPU seconds of that master)

and ``redis_cluster_speedup_3_masters`` = capacity(3 masters) / capacity(1 Redis), the same
operations through both. It stays below 3 where tenants hash unevenly over the masters (the
busiest holds more than a third) and where a batch of many tenants costs a cluster one script
call per slot instead of one for all.
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import rounded
from facepipe.cli.localcluster import start_redis_cluster
from facepipe.cli.localservers import start_redis
from facepipe.core.redisconn import Client, connect, masters
from facepipe.core.settings import load_settings
from facepipe.core.tenancy import tenant_stream_name
from facepipe.core.worker import Outcome, Publish, StreamMessage, Worker
from facepipe.store.dedup import DedupCache, Owner


@contextmanager
def redis_with(masters_count: int) -> Iterator[str]:
    """The URL of one redis-server (1) or of a local Redis Cluster of ``masters_count`` masters."""
    with tempfile.TemporaryDirectory(prefix="facepipe-bench-cluster-") as tmp:
        if masters_count == 1:
            server = start_redis(Path(tmp))
            try:
                yield server.url
            finally:
                server.stop()
            return
        cluster = start_redis_cluster(Path(tmp), masters=masters_count)
        try:
            yield cluster.url
        finally:
            cluster.stop()


def _cpu(client: Client) -> list[float]:
    """Main-thread CPU seconds of every master."""
    return [
        float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
        for info in (server.info("cpu") for server in masters(client))
    ]


def _idle_cpu_rate(client: Client, seconds: float = 2.0) -> list[float]:
    """Each master's main-thread CPU seconds per second while nothing is sent to it."""
    before = _cpu(client)
    time.sleep(seconds)
    return [(after - prior) / seconds for after, prior in zip(_cpu(client), before, strict=True)]


def _commands(client: Client) -> dict[str, int]:
    """Calls per command, summed over the masters."""
    total: dict[str, int] = {}
    for server in masters(client):
        for name, figures in server.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            total[command] = total.get(command, 0) + int(figures["calls"])
    return total


def _measured(url: str, work: Callable[[Callable[[], None]], int]) -> dict[str, Any]:
    """Run ``work`` (returns operations done); per-master CPU it cost, and the capacity.

    ``work`` calls the function it is given once its clients are connected and warmed up: the
    measurement starts there (a cluster client's start-up, e.g. COMMAND, is not per operation)."""
    admin = connect(url)
    idle = _idle_cpu_rate(admin)
    before: list[float] = []
    started = 0.0

    def start() -> None:
        nonlocal before, started
        for server in masters(admin):
            server.config_resetstat()
        before = _cpu(admin)
        started = time.perf_counter()

    operations = work(start)
    wall = time.perf_counter() - started
    spent = [after - prior for after, prior in zip(_cpu(admin), before, strict=True)]
    calls = _commands(admin)
    admin.close()
    # What each master spends idle meanwhile (its cron, the cluster bus) is no cost of these
    # operations: the slow clients here stretch the run, a saturated master would not pay more.
    busy = [max(s - rate * wall, 1e-9) for s, rate in zip(spent, idle, strict=True)]
    busiest = max(busy)
    return {
        "operations": operations,
        "wall_per_s": rounded(operations / wall, 1),
        "master_cpu_s": [rounded(s, 3) for s in spent],
        "master_idle_cpu_ms_per_s": [rounded(rate * 1000, 2) for rate in idle],
        "busiest_share": rounded(busiest / sum(busy), 3),
        "capacity_per_s": rounded(operations / busiest, 1),
        "capacity_per_s_with_idle_cpu": rounded(operations / max(spent), 1) if max(spent) else None,
        "calls_per_operation": {name: rounded(n / operations, 2) for name, n in sorted(calls.items())},
    }


# --- dedup -------------------------------------------------------------------------------------


def _dedup_client(
    url: str, tenants: int, checks: int, worker: int, queue: multiprocessing.Queue, go: Any
) -> None:
    cache = DedupCache(connect(url), load_settings(redis_url=url, dedup_max_hamming=8))
    rng = np.random.default_rng(worker)
    for tenant in range(tenants):  # warm up: connections to every master, scripts loaded
        cache.lookup(f"ct{tenant}", "0" * 16)
    queue.put("ready")
    go.wait()
    done = 0
    # The indexer's call: a batch of 10 messages of 2 faces. On a cluster each tenant has its own
    # streams and indexers (a message of another tenant is dead-lettered), so a batch is one
    # tenant's: the same calls go to the single Redis.
    for call in range(checks // 20):
        batch = []
        tenant = f"ct{int(rng.integers(0, tenants))}"
        for message in range(10):
            faces = [
                (f"{int(v):016x}", Owner(f"w{worker}c{call}m{message}", i))
                for i, v in enumerate(rng.integers(0, 2**64, size=2, dtype=np.uint64))
            ]
            batch.append((tenant, faces))
        cache.check_and_remember_batch(batch)
        done += 20
    queue.put(done)


def dedup_figure(url: str, tenants: int, checks_per_client: int, clients: int = 2) -> dict[str, Any]:
    def work(start: Callable[[], None]) -> int:
        context = multiprocessing.get_context("fork")
        queue: multiprocessing.Queue = context.Queue()
        go = context.Event()
        procs = [
            context.Process(target=_dedup_client, args=(url, tenants, checks_per_client, w, queue, go))
            for w in range(clients)
        ]
        for proc in procs:
            proc.start()
        assert all(queue.get(timeout=300) == "ready" for _ in procs)
        start()
        go.set()
        done = sum(queue.get(timeout=600) for _ in procs)
        for proc in procs:
            proc.join(timeout=60)
        return done

    return _measured(url, work)


# --- pipeline streams --------------------------------------------------------------------------


class PassThrough:
    """A stage without models: each message is passed on to the next stream with its counters
    (what every real stage does to Redis per message: read, XADD, HINCRBY, XACK in a MULTI)."""

    name = "bench"
    required_fields = ("tenant_id",)

    def __init__(self, stream: str) -> None:
        self.input_stream = stream
        self.output = f"{stream}:detected"

    def setup(self) -> None: ...

    def close(self) -> None: ...

    def process_batch(self, messages: list[StreamMessage]) -> list[Outcome | BaseException]:
        return [
            Outcome(
                publish=[Publish(self.output, message.payload)],
                summary={"faces_total": 1, "accepted": 1},
                counters={"faces_processed": 1},
            )
            for message in messages
        ]


def streams_figure(url: str, tenants: int, per_tenant: int) -> dict[str, Any]:
    """Messages of ``tenants`` tenants, each through its own streams by one worker thread; the
    producer's XADDs are part of what is measured."""
    client = connect(url, decode_responses=True)
    names = [f"st{n}" for n in range(tenants)]

    def work(start: Callable[[], None]) -> int:
        workers = []
        for tenant in names:
            settings = load_settings(
                redis_url=url,
                redis_stream_name=tenant_stream_name(tenant),
                read_block_ms=5000,  # idle workers poll rarely: their empty reads are no per-message cost
                redis_consumer_name=f"bench-{tenant}",
            )
            workers.append(Worker(settings, PassThrough(tenant_stream_name(tenant)), max_batch=50))
        threads = [threading.Thread(target=worker.run, daemon=True) for worker in workers]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while not all(client.exists(tenant_stream_name(t)) for t in names):  # every group created
            assert time.monotonic() < deadline, "the bench workers did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        start()
        for tenant in names:
            pipe = client.pipeline(transaction=False)
            for n in range(per_tenant):
                pipe.xadd(tenant_stream_name(tenant), {"message": json.dumps({"tenant_id": tenant, "n": n})})
            pipe.execute()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if sum(client.xlen(f"{tenant_stream_name(t)}:detected") for t in names) >= tenants * per_tenant:
                break
            time.sleep(0.1)
        for worker in workers:
            worker.stop()
        for thread in threads:
            thread.join(timeout=60)
        return tenants * per_tenant

    figure = _measured(url, work)
    client.close()
    return figure


def cluster_figures(tenants: int, dedup_checks: int, stream_messages: int) -> dict[str, object]:
    """Both figures with 1 Redis and with 3 masters; the speedups of the capacities."""
    runs: dict[str, dict[str, Any]] = {}
    for count in (1, 3):
        with redis_with(count) as url:
            runs[f"{count}_masters"] = {
                "dedup": dedup_figure(url, tenants, dedup_checks),
                "streams": streams_figure(url, tenants, stream_messages),
            }

    def speedup(kind: str) -> float | None:
        one, three = runs["1_masters"][kind]["capacity_per_s"], runs["3_masters"][kind]["capacity_per_s"]
        return rounded(three / one, 2) if one and three else None

    return {
        "redis_cluster_speedup_3_masters": speedup("dedup"),
        "redis_cluster": {
            "basis": "capacity = operations / busiest master's main-thread CPU seconds (INFO cpu); "
            "speedup = capacity with 3 masters / with 1 Redis",
            "tenants": tenants,
            "dedup_checks_per_s": {k: v["dedup"]["capacity_per_s"] for k, v in runs.items()},
            "stream_messages_per_s": {k: v["streams"]["capacity_per_s"] for k, v in runs.items()},
            "streams_speedup_3_masters": speedup("streams"),
            "runs": runs,
        },
    }
