"""The dedup cache on a real 3-master Redis Cluster: each tenant's keys on its own slot, scripts
and commits routed there, a batch of many tenants split by slot, recall and races as on one Redis."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from dedupkit import RACER, A, B, cache_factory, flip, race, remember, remember_message

from facepipe.cli.localcluster import LocalRedisCluster
from facepipe.core.redisconn import Client, scan_keys, slot_of
from facepipe.store.dedup import DedupCache, Owner, hamming
from facepipe.store.dedup.config import tenant_prefix

TENANTS = [f"shard-{n}" for n in range(12)]


@pytest.fixture(params=["optimistic", "script"])
def make_cluster_cache(
    request: pytest.FixtureRequest, cluster_client: Client, cluster_url: str
) -> Callable[..., DedupCache]:
    if request.param == "script":
        return cache_factory(cluster_client, cluster_url, optimistic_attempts=0)
    return cache_factory(cluster_client, cluster_url)


def test_cluster_tenants_spread_over_every_master(redis_cluster: LocalRedisCluster) -> None:
    masters = {redis_cluster.master_port_of(tenant_prefix(tenant) + "near:m5") for tenant in TENANTS}
    assert len(masters) == 3


def test_cluster_recall_is_exact_up_to_the_threshold_and_nothing_beyond(
    make_cluster_cache: Callable[..., DedupCache],
) -> None:
    cache = make_cluster_cache(max_hamming=8)
    rng = random.Random(19)
    for distance in range(11):
        for attempt in range(6):
            tenant = TENANTS[(distance * 6 + attempt) % len(TENANTS)] + f"-{distance}-{attempt}"
            base = f"{rng.getrandbits(64):016x}"
            variant = flip(base, rng.sample(range(64), distance))
            assert hamming(base, variant) == distance
            assert not remember(cache, tenant, base, A).is_duplicate
            result = remember_message(cache, tenant, [(variant, B)])[0]
            assert result.is_duplicate == (distance <= 8), (tenant, distance)
            if distance <= 8:
                assert (result.matched_owner, result.matched_phash) == (A, base)


def test_cluster_batch_of_many_tenants_is_split_by_slot_and_tenants_never_suppress_each_other(
    make_cluster_cache: Callable[..., DedupCache], cluster_client: Client
) -> None:
    cache = make_cluster_cache(max_hamming=8)
    phash = "8f373c9c3c9c3c1e"
    owners = {tenant: Owner(f"{n:064x}", 0) for n, tenant in enumerate(TENANTS)}
    claimed = cache.check_and_claim_batch([(tenant, [(phash, owners[tenant])]) for tenant in TENANTS])
    assert all(not result.is_duplicate and not result.pending for [result] in claimed)
    assert cache.confirm([(tenant, [(phash, owners[tenant])]) for tenant in TENANTS]) == len(TENANTS)
    # The same face again, by another owner: a duplicate in every tenant, of that tenant's own owner.
    again = cache.check_and_remember_batch([(tenant, [(flip(phash, [3]), B)]) for tenant in TENANTS])
    assert [result.matched_owner for [result] in again] == [owners[tenant] for tenant in TENANTS]
    slots = {slot_of(cluster_client, tenant_prefix(tenant)) for tenant in TENANTS}
    assert len(slots) == len(TENANTS)  # (so the batch did need one commit per slot)
    for tenant in TENANTS:  # every key of a tenant is in its slot
        keys = list(scan_keys(cluster_client, tenant_prefix(tenant) + "*"))
        assert keys and {slot_of(cluster_client, key) for key in keys} == {
            slot_of(cluster_client, tenant_prefix(tenant))
        }


def test_cluster_deletion_of_one_tenant_leaves_the_others(
    make_cluster_cache: Callable[..., DedupCache], cluster_client: Client
) -> None:
    cache = make_cluster_cache(max_hamming=8)
    image = "c" * 64
    for tenant in TENANTS:
        remember(cache, tenant, "8f373c9c3c9c3c1e", Owner(image, 0))
    before = cache.stats()["keys"]
    assert cache.forget_image(TENANTS[0], image) == 1
    assert not list(scan_keys(cluster_client, tenant_prefix(TENANTS[0]) + "owner:*"))
    removed = cache.flush(TENANTS[1])
    assert removed > 0
    assert not list(scan_keys(cluster_client, tenant_prefix(TENANTS[1]) + "*"))
    assert not remember(cache, TENANTS[1], "8f373c9c3c9c3c1e", B).is_duplicate
    assert remember(cache, TENANTS[2], "8f373c9c3c9c3c1e", B).is_duplicate
    assert cache.stats()["keys"] < before + 5
    assert cache.flush() > 0 and cache.stats()["keys"] == 0


def test_cluster_two_processes_racing_the_same_hashes_remember_each_exactly_once(
    redis_cluster: LocalRedisCluster, cluster_url: str, cluster_client: Client
) -> None:
    rng = random.Random(7)
    hashes = [f"{rng.getrandbits(64):016x}" for _ in range(200)]
    watch = redis_cluster.client(redis_cluster.master_port_of("race:go"))
    outputs = race(RACER, cluster_url, cluster_client, ("racer-one", "racer-two"), hashes, watch=watch)
    for i, phash in enumerate(hashes):
        winners = [won[i] for won in outputs if won[i] is not None]
        assert winners == [phash], f"hash {i}: {len(winners)} processes remembered it"
