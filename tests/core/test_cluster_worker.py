"""The worker loop on a real 3-master Redis Cluster: one toy stage per tenant, each tenant's
streams and counters on its own slot, the ack MULTI within it, /stats summed across masters."""

from __future__ import annotations

import json

from facepipe.cli.localcluster import LocalRedisCluster
from facepipe.core.redisconn import Client, scan_keys
from facepipe.core.stats import Stats
from facepipe.core.tenancy import tenant_stream_name

CANDIDATES = [f"tenant-{n}" for n in range(40)]


def tenants_on_every_master(cluster: LocalRedisCluster) -> dict[str, int]:
    """One tenant per master: tenant -> the port of the master holding its streams."""
    chosen: dict[int, str] = {}
    for tenant in CANDIDATES:
        chosen.setdefault(cluster.master_port_of(tenant_stream_name(tenant)), tenant)
        if len(chosen) == cluster.masters:
            return {tenant: port for port, tenant in chosen.items()}
    raise AssertionError(f"{CANDIDATES} do not reach every master")


def test_cluster_workers_of_tenants_on_every_master_ack_each_message_once_and_stats_sum_across_masters(
    harness, redis_cluster: LocalRedisCluster, cluster_url: str, cluster_client: Client
) -> None:
    tenants = tenants_on_every_master(redis_cluster)
    assert len(set(tenants.values())) == 3
    per_tenant = 15
    published: dict[str, list[str]] = {}
    for tenant in tenants:
        final = f"{tenant_stream_name(tenant)}:embedded"
        payloads = [json.dumps(harness.ingest_payload(n, tenant_id=tenant)) for n in range(per_tenant)]
        published[tenant] = [str(cluster_client.xadd(final, {"message": p})) for p in payloads]
    # A message of another tenant on tenant 0's stream: its outputs would be on another slot.
    first = next(iter(tenants))
    stray = str(
        cluster_client.xadd(
            f"{tenant_stream_name(first)}:embedded",
            {"message": json.dumps(harness.ingest_payload(99, tenant_id="someone-else"))},
        )
    )
    workers = [
        harness.start(
            REDIS_URL=cluster_url,
            REDIS_STREAM_NAME=tenant_stream_name(tenant),
            REDIS_CONSUMER_NAME=f"toy-{tenant}",
            TOY_INPUT="final",
        )
        for tenant in tenants
    ]

    def outputs(tenant: str) -> list[str]:
        out = f"{tenant_stream_name(tenant)}:embedded:out"
        return [json.loads(fields["message"])["source"] for _id, fields in cluster_client.xrange(out)]

    for tenant in tenants:
        harness.wait_until(lambda t=tenant: len(outputs(t)) == per_tenant, what=f"{tenant}'s outputs")
    dlq = f"{tenant_stream_name(first)}:embedded:dlq"
    harness.wait_until(lambda: cluster_client.exists(dlq), what="the stray message in the DLQ")
    for worker in workers:
        assert worker.terminate() == 0, worker.log()

    for tenant, port in tenants.items():
        assert outputs(tenant) == published[tenant]  # each once, in order
        final = f"{tenant_stream_name(tenant)}:embedded"
        assert int(cluster_client.xpending(final, "pipeline")["pending"]) == 0
        counters = Stats(cluster_client).snapshot(tenant)["counters"]
        assert counters["worker_msgs_acked"] == per_tenant
        assert counters["faces_processed"] == per_tenant
        # The tenant's counters live on its streams' master (the MULTI could not span two).
        assert redis_cluster.client(port).exists(Stats(cluster_client).counters_key(tenant))
    [(_id, entry)] = cluster_client.xrange(dlq)
    assert entry["reason"] == "tenant_stream_mismatch" and entry["source_id"] == stray
    assert "someone-else" in entry["error"]
    total = Stats(cluster_client).snapshot()["counters"]
    assert total["worker_msgs_acked"] == per_tenant * len(tenants)
    assert total["faces_processed"] == per_tenant * len(tenants)
    assert total["worker_msgs_dlq"] == 1
    assert Stats(cluster_client).snapshot("someone-else")["counters"]["worker_msgs_dlq"] == 0
    # No global key: on a cluster the totals are the sum of what every master holds.
    assert list(scan_keys(cluster_client, "stats:counters")) == []
    assert list(scan_keys(cluster_client, "stats:tenant:*"))  # (the scan does find keys)


def test_cluster_worker_refuses_a_stream_without_its_tenant_hash_tag(harness, cluster_url: str) -> None:
    result = harness.run("--once", REDIS_URL=cluster_url, REDIS_STREAM_NAME="face-processing-queue")
    assert result.returncode == 2, result.stderr
    assert "must carry its tenant's hash tag" in result.stderr


def test_cluster_worker_reclaims_a_dead_consumers_entries_exactly_once(
    harness, cluster_url: str, cluster_client: Client
) -> None:
    stream = tenant_stream_name("reclaim")
    payloads = [json.dumps(harness.ingest_payload(n, tenant_id="reclaim")) for n in range(4)]
    ids = [str(cluster_client.xadd(stream, {"message": payload})) for payload in payloads]
    cluster_client.xgroup_create(stream, "pipeline", id="0")
    cluster_client.xreadgroup("pipeline", "dead", {stream: ">"}, count=4)  # a consumer that died
    worker = harness.start(REDIS_URL=cluster_url, REDIS_STREAM_NAME=stream, CLAIM_IDLE_MS="300")
    out = f"{stream}:out"
    harness.wait_until(lambda: cluster_client.exists(out) and cluster_client.xlen(out) == 4, what="reclaims")
    assert worker.terminate() == 0, worker.log()
    sources = [json.loads(fields["message"])["source"] for _id, fields in cluster_client.xrange(out)]
    assert sorted(sources) == sorted(ids)
    assert int(cluster_client.xpending(stream, "pipeline")["pending"]) == 0
