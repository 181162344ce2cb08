"""Failover on a real Redis Cluster with replicas: the master holding a tenant's slot is killed
(SIGKILL) while a producer publishes and a worker consumes; its replica is promoted.

What must hold: the worker rides through the promotion and nothing it finished is done twice
(every output is of a different message); every message that survived in the stream is
processed. What Redis's asynchronous replication can lose, and this test measures rather than
hides: writes the dead master acknowledged but had not yet sent to its replica. Those are the
producer's last XADDs before the kill (the loss window), never older ones; docs/runtime.md
"Redis Cluster" gives the measured figure.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from facepipe.cli.localcluster import start_redis_cluster
from facepipe.core.redisconn import connect
from facepipe.core.tenancy import tenant_stream_name

TENANT = "failover"
# The producer's acknowledged writes older than this before the kill must all survive.
LOSS_WINDOW_BOUND_S = 2.0


class Producer(threading.Thread):
    """Publishes message n = 0, 1, 2... until stopped; records when each XADD was acknowledged.
    An XADD that failed is never retried (it may have run): its n is simply not acknowledged."""

    def __init__(self, url: str, stream: str, payload: dict) -> None:
        super().__init__(daemon=True)
        self.client = connect(url, decode_responses=True, socket_timeout=2, socket_connect_timeout=2)
        self.stream = stream
        self.payload = payload
        self.acked: dict[int, float] = {}
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            message = json.dumps({**self.payload, "image_sha256": f"img{n}", "n": n})
            try:
                self.client.xadd(self.stream, {"message": message})
                self.acked[n] = time.monotonic()
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError):
                self.failed += 1
                time.sleep(0.05)
            n += 1
            time.sleep(0.002)


def _outputs(client: RedisCluster, stream: str) -> list[int]:
    return [json.loads(fields["message"])["n"] for _id, fields in client.xrange(stream)]


def test_cluster_failover_of_a_tenants_master_loses_only_the_unreplicated_window_and_duplicates_nothing(
    harness, tmp_path: Path
) -> None:
    cluster = start_redis_cluster(tmp_path / "cluster", masters=3, replicas=1, node_timeout_ms=1000)
    stream = tenant_stream_name(TENANT)
    out = f"{stream}:out"
    try:
        client = connect(cluster.url, decode_responses=True, socket_timeout=5)
        victim = cluster.master_port_of(stream)
        producer = Producer(cluster.url, stream, harness.ingest_payload(0, tenant_id=TENANT))
        worker = harness.start(REDIS_URL=cluster.url, REDIS_STREAM_NAME=stream, CLAIM_IDLE_MS="1000")
        producer.start()
        harness.wait_until(lambda: client.exists(out) and client.xlen(out) >= 200, what="a steady flow")
        killed_at = time.monotonic()
        cluster.node(victim).proc.kill()  # SIGKILL: no chance to flush anything to the replica
        cluster.node(victim).proc.wait(timeout=30)
        promoted = harness.wait_until(
            lambda: _promoted(cluster, stream, victim), timeout=90, what="the replica's promotion"
        )
        harness.wait_until(
            lambda: max(producer.acked.values()) > time.monotonic() - 1, timeout=60, what="writes again"
        )
        time.sleep(0.5)  # some writes after the promotion too
        producer.stop.set()
        producer.join(timeout=30)
        fresh = connect(cluster.url, decode_responses=True, socket_timeout=5)

        def drained() -> bool:
            groups = fresh.xinfo_groups(stream)
            idle = [int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0 for g in groups]
            return bool(groups) and all(idle)

        harness.wait_until(drained, timeout=120, what="the stream to drain after the failover")
        assert worker.terminate() == 0, worker.log()[-3000:]

        outputs = _outputs(fresh, out)
        in_stream = {json.loads(f["message"])["n"] for _id, f in fresh.xrange(stream)}
        duplicates = len(outputs) - len(set(outputs))
        lost = sorted(n for n in producer.acked if n not in in_stream and n not in set(outputs))
        unprocessed = sorted(in_stream - set(outputs))
        window = [killed_at - producer.acked[n] for n in lost]
        times = sorted(producer.acked.values())
        back = max(later - earlier for earlier, later in itertools.pairwise(times))  # the outage
        print(
            f"\nfailover: master :{victim} killed, replica :{promoted} promoted; "
            f"{len(producer.acked)} acked XADDs, {producer.failed} refused during the failover; "
            f"lost {len(lost)} acknowledged writes, acknowledged at most "
            f"{max(window, default=0) * 1000:.1f} ms before the kill; duplicates {duplicates}; "
            f"writes refused for {back:.1f} s"
        )
        assert duplicates == 0, "a message was processed twice across the failover"
        assert unprocessed == [], f"messages left unprocessed: {unprocessed[:10]}"
        assert all(age < LOSS_WINDOW_BOUND_S for age in window), (
            f"an acknowledged write older than {LOSS_WINDOW_BOUND_S}s was lost: {sorted(window)[-5:]}"
        )
        assert len(set(outputs)) >= 200
    finally:
        cluster.stop()


def _promoted(cluster, stream: str, victim: int) -> int | None:
    """The port of the slot's new master once it is not the killed one."""
    try:
        port = cluster.master_port_of(stream)
    except RuntimeError:
        return None
    return port if port != victim else None
