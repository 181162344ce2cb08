"""``facepipe redis-migrate``: a single Redis's keys of the layout before Redis Cluster support
(``dedup:t:<tenant>:``, ``stats:tenant:<tenant>:``) are renamed to the ``{tenant}`` layout, and
what they held keeps working: a face remembered before is still a duplicate, counters add up."""

from __future__ import annotations

import json

import pytest
import redis

from facepipe.cli.localcluster import LocalRedisCluster
from facepipe.cli.main import main
from facepipe.core.settings import load_settings
from facepipe.core.stats import Stats
from facepipe.store.dedup import DedupCache, Owner

OLD_OWNER = Owner("a" * 64, 0)
NEW_OWNER = Owner("b" * 64, 0)
PHASH = "8f373c9c3c9c3c1e"


def _as_before_the_cluster_layout(client: redis.Redis) -> int:
    """Rename every key to the old layout (what an install before the upgrade holds)."""
    renamed = 0
    for key in list(client.scan_iter("*")):
        old = key.replace("{", "").replace("}", "")
        if old != key:
            client.rename(key, old)
            renamed += 1
    return renamed


def test_redis_migrate_renames_old_keys_and_the_old_data_keeps_working(
    redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = DedupCache(redis_client, load_settings(redis_url=redis_url))
    for tenant in ("acme", "globex"):
        cache.check_and_remember_batch([(tenant, [(PHASH, OLD_OWNER)])])
        Stats(redis_client).incr("faces_processed", 3, tenant)
    old_keys = _as_before_the_cluster_layout(redis_client)
    assert old_keys >= 8 and redis_client.exists("dedup:t:acme:near:m5", "stats:tenant:acme:counters") == 2
    assert not cache.lookup("acme", PHASH, NEW_OWNER).is_duplicate  # unreadable before the migration
    Stats(redis_client).incr("faces_processed", 1, "acme")  # the new version ran first: merged

    assert main(["redis-migrate", "--redis-url", redis_url, "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert dry["renamed"] == old_keys and redis_client.exists("dedup:t:acme:near:m5")

    assert main(["redis-migrate", "--redis-url", redis_url, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tenants"] == ["acme", "globex"]
    assert report["renamed"] + report["merged"] == old_keys and report["merged"] == 1
    assert not list(redis_client.scan_iter("dedup:t:acme:*"))
    assert not list(redis_client.scan_iter("stats:tenant:a*"))
    for tenant in ("acme", "globex"):
        result = cache.lookup(tenant, PHASH, NEW_OWNER)
        assert result.is_duplicate and result.matched_owner == OLD_OWNER
    assert Stats(redis_client).snapshot("acme")["counters"]["faces_processed"] == 4
    assert Stats(redis_client).snapshot("globex")["counters"]["faces_processed"] == 3

    assert main(["redis-migrate", "--redis-url", redis_url, "--json"]) == 0  # again: nothing to do
    assert json.loads(capsys.readouterr().out)["renamed"] == 0


def test_redis_migrate_refuses_a_cluster_and_says_how_to_move_keys_there(
    redis_cluster: LocalRedisCluster, cluster_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["redis-migrate", "--redis-url", cluster_url]) != 0
    assert "redis-cli --cluster import" in capsys.readouterr().err
