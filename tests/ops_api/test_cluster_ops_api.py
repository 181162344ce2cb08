"""ops-api on a real 3-master Redis Cluster: /stats sums every tenant's figures across masters,
/stats?tenant_id reads one tenant's slot, DELETE /tenants/<t> purges that tenant's keys only."""

from __future__ import annotations

import json

from facepipe.cli.localcluster import LocalRedisCluster
from facepipe.core.redisconn import Client, scan_keys
from facepipe.core.settings import load_settings
from facepipe.core.stats import Stats
from facepipe.core.tenancy import tenant_stream_name
from facepipe.store.dedup import DedupCache, Owner

TENANTS = ("acme", "globex", "zeta", "initech", "umbrella")
PHASH = "8f373c9c3c9c3c1e"


def _fill(client: Client, cluster_url: str) -> None:
    cache = DedupCache(client, load_settings(redis_url=cluster_url))
    for n, tenant in enumerate(TENANTS, start=1):
        stats = Stats(client, slot_tag=tenant)
        stats.incr("faces_processed", n, tenant)
        stats.record_timing("detection", 10.0 * n, 1, tenant)
        cache.check_and_remember_batch([(tenant, [(PHASH, Owner(f"{n:064x}", 0))])])
        message = {"tenant_id": tenant, "image_sha256": f"{n:064x}", "bucket": "raw", "key": "k"}
        client.xadd(tenant_stream_name(tenant), {"message": json.dumps(message)})


def test_cluster_stats_sum_every_master_and_one_tenant_reads_its_slot(
    make_client, redis_cluster: LocalRedisCluster, cluster_url: str, cluster_client: Client
) -> None:
    ports = {redis_cluster.master_port_of(tenant_stream_name(tenant)) for tenant in TENANTS}
    assert len(ports) >= 2, "the tenants should be spread over masters"
    _fill(cluster_client, cluster_url)
    client = make_client(redis_url=cluster_url, redis_stream_name=tenant_stream_name("zeta"))
    body = client.get("/stats").json()
    assert body["counters"]["faces_processed"] == sum(range(1, len(TENANTS) + 1))
    assert body["timings_ms"]["detection"] == {"count": 5, "total": 150.0, "avg": 30.0}
    assert body["dedup_stats"]["keys"] == len(list(scan_keys(cluster_client, "dedup:*"))) > 0
    assert body["streams"][tenant_stream_name("zeta")]["length"] == 1
    zeta = client.get("/stats", params={"tenant_id": "zeta"}).json()
    assert zeta["counters"]["faces_processed"] == TENANTS.index("zeta") + 1
    metrics = client.get("/metrics").text
    assert "facepipe_stream_length" in metrics


def test_cluster_delete_tenant_purges_its_keys_and_streams_only(
    make_client, cluster_url: str, cluster_client: Client
) -> None:
    _fill(cluster_client, cluster_url)
    client = make_client(redis_url=cluster_url, redis_stream_name=tenant_stream_name("zeta"))
    response = client.delete("/tenants/zeta")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["dedup_entries"] >= 1 and report["stream_entries"] == 1 and report["stats_keys"] >= 1
    assert not list(scan_keys(cluster_client, "dedup:t:{zeta}:*"))
    assert not list(scan_keys(cluster_client, "stats:tenant:{zeta}:*"))
    assert cluster_client.xlen(tenant_stream_name("zeta")) == 0
    for tenant in TENANTS:
        if tenant != "zeta":
            assert Stats(cluster_client).snapshot(tenant)["counters"]["faces_processed"] > 0
            assert list(scan_keys(cluster_client, f"dedup:t:{{{tenant}}}:*"))
    total = client.get("/stats").json()["counters"]["faces_processed"]
    assert total == sum(range(1, len(TENANTS) + 1)) - (TENANTS.index("zeta") + 1)
