"""facepipe.core.redisconn: which URLs name a Redis Cluster, its seeds, and the settings' view."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import RedisCluster

from facepipe.core.redisconn import (
    as_cluster_url,
    check_url,
    connect,
    hash_tag,
    is_cluster_url,
    plain_url,
    seed_nodes,
    settings_url,
)
from facepipe.core.settings import ConfigError, Settings, load_settings


def test_cluster_urls_and_their_seed_nodes() -> None:
    url = "redis+cluster://:secret@node-a:7000,node-b:7001,[::1]:7002"
    assert is_cluster_url(url) and not is_cluster_url("redis://node-a:7000/0")
    assert seed_nodes(url) == [("node-a", 7000), ("node-b", 7001), ("::1", 7002)]
    assert plain_url(url) == "redis://:secret@node-a:7000"
    assert as_cluster_url("rediss://node:6380/0") == "rediss+cluster://node:6380"
    with pytest.raises(ValueError, match="over TCP"):
        as_cluster_url("unix:///tmp/redis.sock")
    for bad in ("http://node:6379", "redis+cluster://", "node:6379"):
        with pytest.raises(ValueError):
            check_url(bad)


def test_hash_tags_are_what_redis_cluster_hashes() -> None:
    assert hash_tag("face-processing-queue:{acme}:detected") == "acme"
    assert hash_tag("dedup:t:{acme}:near:m5") == "acme"
    assert hash_tag("face-processing-queue") is None and hash_tag("a:{}:b") is None


def test_settings_say_when_redis_is_a_cluster_and_refuse_an_unknown_scheme() -> None:
    assert load_settings(redis_url="redis+cluster://a:1").cluster_mode
    flagged = load_settings(redis_url="redis://a:7000/0", redis_cluster=True)
    assert flagged.cluster_mode and settings_url(flagged) == "redis+cluster://a:7000"
    assert not load_settings(redis_url="redis://a:7000/0").cluster_mode
    assert "hash tag" in (load_settings(redis_url="redis+cluster://a:1").cluster_stream_problem() or "")
    tagged = load_settings(redis_url="redis+cluster://a:1", redis_stream_name="q:{acme}")
    assert tagged.cluster_stream_problem() is None
    with pytest.raises((ConfigError, ValueError)):
        load_settings(redis_url="http://a:1")
    assert Settings.model_fields["redis_cluster"].default is False


def test_connect_gives_the_cluster_client_only_for_a_cluster(redis_url: str) -> None:
    single = connect(redis_url)
    assert isinstance(single, redis.Redis) and single.ping()
    single.close()


def test_connect_gives_the_cluster_client_for_a_cluster(cluster_url: str) -> None:
    client = connect(cluster_url, decode_responses=True, health_check_interval=30)  # a single-only option
    assert isinstance(client, RedisCluster) and len(client.get_primaries()) == 3
    client.close()
