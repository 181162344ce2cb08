"""A FacePipeline on a Redis Cluster: spec.redis.cluster (or a redis+cluster:// url) gives the
pods REDIS_CLUSTER=true and KEDA the redis-cluster-streams trigger; the operator's own Redis work
(status figures, stale consumers, purge) runs on a real 3-master cluster."""

from __future__ import annotations

import json
from typing import Any

import pytest
from operatorkit import minimal_spec

from facepipe.cli.localcluster import LocalRedisCluster
from facepipe.core.redisconn import Client
from facepipe.operator.builders import PipelineRef, build_children
from facepipe.operator.consumers import prune_at
from facepipe.operator.environment import stream_names
from facepipe.operator.stream_figures import read_stream_figures
from facepipe.operator.stream_purge import purge_streams
from facepipe.operator.validation import SpecError, parse_spec

OWNER = PipelineRef(name="acme", namespace="tenants", uid="0b7c6a4e-1111-4222-8333-944445555666")
KEDA = {"autoscaling": {"enabled": True, "provider": "keda", "minReplicas": 0, "targetLagPerReplica": 25}}


def _children(redis: dict[str, Any], provider: str = "keda") -> dict[str, dict[str, Any]]:
    raw = minimal_spec("redis://unused:6379/0")
    raw["redis"] = redis
    scaling = KEDA if provider == "keda" else {"autoscaling": {"enabled": True}}
    raw["components"] = {"indexer": scaling, "embedder": scaling}  # one provider for every worker
    children = build_children(OWNER, parse_spec("acme", raw))
    return {f"{child['kind']}/{child['metadata']['name']}": child for child in children}


@pytest.mark.parametrize(
    ("redis", "addresses"),
    [
        ({"url": "redis://cache.svc:6379/0", "cluster": True}, "cache.svc:6379"),
        ({"url": "redis+cluster://node-a:7000,node-b:7001"}, "node-a:7000,node-b:7001"),
    ],
)
def test_cluster_redis_gives_keda_the_cluster_trigger_and_the_pods_redis_cluster(
    redis: dict[str, Any], addresses: str
) -> None:
    children = _children(redis)
    assert children["ScaledObject/acme-indexer"]["spec"]["triggers"] == [
        {
            "type": "redis-cluster-streams",
            "metadata": {
                "stream": "face-processing-queue:{acme}:embedded",
                "consumerGroup": "pipeline",
                count: "25",
                "addresses": addresses,
            },
        }
        for count in ("lagCount", "pendingEntriesCount")
    ]
    assert children["ConfigMap/acme-config"]["data"]["REDIS_CLUSTER"] == "true"
    # The HPA path (prometheus-adapter) is the same per tenant either way.
    selector = _children(redis, provider="hpa")["HorizontalPodAutoscaler/acme-embedder"]["spec"]["metrics"][
        0
    ]["external"]["metric"]
    assert selector["selector"]["matchLabels"] == {"stream_role": "detected", "tenant": "acme"}


def test_a_single_redis_keeps_the_redis_streams_trigger() -> None:
    children = _children({"url": "redis://cache.svc:6379/0"})
    for trigger in children["ScaledObject/acme-indexer"]["spec"]["triggers"]:
        assert trigger["type"] == "redis-streams" and trigger["metadata"]["address"] == "cache.svc:6379"
    assert "REDIS_CLUSTER" not in children["ConfigMap/acme-config"]["data"]


def test_cluster_stream_name_must_carry_the_tenant_hash_tag() -> None:
    raw = minimal_spec("redis+cluster://node-a:7000")
    raw["redis"]["streamName"] = "shared-queue"
    with pytest.raises(SpecError, match=r"hash tag \{acme\}"):
        parse_spec("acme", raw)
    raw["redis"]["streamName"] = "queue:{acme}"
    assert stream_names(parse_spec("acme", raw))["ingest"] == "queue:{acme}"


def test_cluster_operator_status_prune_and_purge_on_a_real_cluster(
    redis_cluster: LocalRedisCluster, cluster_url: str, cluster_client: Client
) -> None:
    spec = parse_spec("acme", minimal_spec(cluster_url))
    streams = stream_names(spec)
    ingest = streams["ingest"]
    for n in range(3):
        cluster_client.xadd(ingest, {"message": json.dumps({"tenant_id": "acme", "n": n})})
    cluster_client.xgroup_create(ingest, "pipeline", id="0")
    cluster_client.xreadgroup("pipeline", "gone-pod", {ingest: ">"}, count=1)
    cluster_client.xadd(f"{ingest}:dlq", {"reason": "x"})
    figures = {f.role: f for f in read_stream_figures(cluster_url, streams, "pipeline")}
    assert (figures["ingest"].length, figures["ingest"].lag, figures["ingest"].pending) == (3, 2, 1)
    assert figures["ingest"].dlqLength == 1
    cluster_client.xack(ingest, "pipeline", *[e for e, _ in cluster_client.xrange(ingest, count=1)])
    assert prune_at(cluster_url, streams.values(), "pipeline", idle_seconds=0) == {ingest: ["gone-pod"]}
    report = purge_streams(cluster_url, streams.values(), "acme", whole=True)
    assert report.streams_deleted == 2 and not cluster_client.exists(ingest)
