"""Dedup claims: the indexer's entries become authoritative only for faces that are indexed.

``check_and_claim_batch`` remembers new faces as claims; ``confirm`` (the faces are indexed)
makes them suppress near-duplicates, ``release`` (they will not be) or the claim TTL drops them.
A face near only claimed faces of others is pending: neither skipped nor remembered. Also: a
deleted hash leaves no byte behind, even when a commit that read before the deletion lands after.
Both decision paths (optimistic and all-in-Redis) against a real redis-server.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
import redis
from dedupkit import A, B, between_read_and_commit, flip, race, remember, skips

from facepipe.store.dedup import NOT_DUPLICATE, DedupCache, DedupResult, Face, Owner
from facepipe.store.dedup.layout import own_buckets

BASE = "8f373c9c3c9c3c1e"
NEAR = flip(BASE, [3, 33])  # distance 2


def claim(cache: DedupCache, tenant: str, faces: list[Face]) -> list[DedupResult]:
    return cache.check_and_claim_batch([(tenant, faces)])[0]


def owner_entry(client: redis.Redis, tenant: str, phash: str) -> str | None:
    return client.get(f"dedup:t:{tenant}:owner:{phash}")


def every_byte(client: redis.Redis) -> bytes:
    """Every key name and value of the database, as one blob to search."""
    raw = redis.Redis(connection_pool=redis.ConnectionPool(**{
        **client.connection_pool.connection_kwargs, "decode_responses": False
    }))
    blob = bytearray()
    for key in raw.scan_iter("*"):
        blob += key
        kind = raw.type(key)
        if kind == b"string":
            blob += raw.get(key) or b""
        elif kind == b"hash":
            for field, value in raw.hgetall(key).items():
                blob += field + value
        elif kind == b"set":
            blob += b"".join(raw.smembers(key))
    return bytes(blob)


def test_a_claim_makes_near_faces_wait_until_it_is_confirmed(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8)
    assert claim(cache, "demo", [(BASE, A)]) == [NOT_DUPLICATE]
    assert owner_entry(redis_client, "demo", BASE) == f"?{A.token}"
    assert 0 < redis_client.pttl(f"dedup:t:demo:owner:{BASE}") <= 120_000
    for phash in (BASE, NEAR):  # the same hash, or a near one: undecided while A is being indexed
        (waiting,) = claim(cache, "demo", [(phash, B)])
        assert (waiting.is_duplicate, waiting.pending, waiting.matched_owner) == (False, True, A)
        assert owner_entry(redis_client, "demo", NEAR) is None  # a pending face is not remembered
    assert claim(cache, "demo", [(BASE, A)]) == [NOT_DUPLICATE]  # A's redelivery: its own claim

    assert cache.confirm([("demo", [(BASE, A)])]) == 1
    assert owner_entry(redis_client, "demo", BASE) == A.token
    assert redis_client.pttl(f"dedup:t:demo:owner:{BASE}") > 3_000_000  # the full DEDUP_TTL
    (duplicate,) = claim(cache, "demo", [(NEAR, B)])
    assert (duplicate.is_duplicate, duplicate.matched_owner, duplicate.distance) == (True, A, 2)
    assert cache.confirm([("demo", [(BASE, A)])]) == 1  # confirming twice is harmless


def test_a_released_claim_leaves_nothing_that_hides_a_face(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8)
    claim(cache, "demo", [(BASE, A), ("0123456789abcdef", Owner(A.image_sha256, 1, "e1"))])
    assert cache.release([("demo", [(BASE, A), ("0123456789abcdef", Owner(A.image_sha256, 1, "e2"))])]) == 1
    # The second face was claimed by another event: that claim is not this one, it stays.
    assert owner_entry(redis_client, "demo", "0123456789abcdef") is not None
    assert owner_entry(redis_client, "demo", BASE) is None
    assert bytes.fromhex(BASE) not in every_byte(redis_client)  # no record, no log entry
    assert claim(cache, "demo", [(NEAR, B)]) == [NOT_DUPLICATE]  # nothing waits, nothing skips
    assert cache.confirm([("demo", [(BASE, A)])]) == 0  # a released claim is not confirmed back
    assert owner_entry(redis_client, "demo", BASE) is None


def test_release_never_touches_a_confirmed_entry_or_another_owners_claim(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8)
    claim(cache, "demo", [(BASE, A)])
    cache.confirm([("demo", [(BASE, A)])])
    assert cache.release([("demo", [(BASE, A)])]) == 0
    assert claim(cache, "demo", [(BASE, A)]) == [NOT_DUPLICATE]  # a redelivery after indexing...
    assert owner_entry(redis_client, "demo", BASE) == A.token  # ...does not downgrade the entry
    assert cache.release([("demo", [(BASE, B)])]) == 0
    assert skips(cache, "demo", NEAR, B)


def test_an_unconfirmed_claim_expires_after_the_claim_ttl(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8, claim_ttl=1)
    claim(cache, "demo", [(BASE, A)])  # its indexer dies before confirming or releasing
    deadline = time.monotonic() + 30
    while owner_entry(redis_client, "demo", BASE) is not None:
        assert time.monotonic() < deadline, "the claim never expired"
        time.sleep(0.1)
    assert claim(cache, "demo", [(NEAR, B)]) == [NOT_DUPLICATE]
    # Forgetting the image later also drops the expired claim's records (nobody owns them).
    assert cache.forget_image("demo", A.image_sha256) == 0
    assert bytes.fromhex(BASE) not in every_byte(redis_client)


def test_in_one_call_a_face_near_another_messages_face_is_pending_and_one_of_its_own_message_is_not(
    make_cache: Callable[..., DedupCache],
) -> None:
    cache = make_cache(max_hamming=8)
    first, second = Owner("1" * 64, 0, "e1"), Owner("2" * 64, 0, "e2")
    sibling = Owner(first.image_sha256, 1, "e1")
    results = cache.check_and_claim_batch(
        [("acme", [(BASE, first), (flip(BASE, [9]), sibling)]), ("acme", [(NEAR, second)])]
    )
    (kept, same_image), (later,) = results
    assert kept == NOT_DUPLICATE
    assert (same_image.is_duplicate, same_image.matched_owner) == (True, first)  # indexed together
    assert (later.pending, later.matched_owner) == (True, first)  # the first message may yet fail


def test_a_confirmed_face_near_by_wins_over_a_nearer_claim(make_cache: Callable[..., DedupCache]) -> None:
    cache = make_cache(max_hamming=8)
    remember(cache, "demo", flip(BASE, [1, 2, 3, 4, 5, 6]), A)  # confirmed, distance 6
    claim(cache, "demo", [(flip(BASE, [1]), Owner("c" * 64, 0))])  # claimed, distance 1
    (result,) = claim(cache, "demo", [(BASE, B)])
    assert (result.is_duplicate, result.matched_owner, result.distance) == (True, A, 6)


def test_forgetting_moves_the_sequence_so_a_commit_read_before_cannot_write_the_hash_back(
    optimistic_cache: Callable[..., DedupCache], monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    cache, deleter = optimistic_cache(max_hamming=8), optimistic_cache(max_hamming=8)
    deleted = BASE
    # A face far from the deleted one that shares one of its buckets: the commit rewrites that bucket.
    sharing = flip(BASE, [20, 21, 22, 23, 40, 41, 42, 43, 50, 51, 52, 53])
    assert set(own_buckets(deleted, cache.layout)) & set(own_buckets(sharing, cache.layout))
    remember(cache, "demo", deleted, A)

    def the_image_is_deleted_meanwhile(read: int) -> None:
        if read == 0:
            assert deleter.forget_image("demo", A.image_sha256) == 1

    between_read_and_commit(cache, monkeypatch, the_image_is_deleted_meanwhile)
    assert remember(cache, "demo", sharing, B) == NOT_DUPLICATE
    assert bytes.fromhex(deleted) not in every_byte(redis_client)
    assert not skips(cache, "demo", flip(deleted, [60]), Owner("c" * 64, 0))
    assert skips(cache, "demo", flip(sharing, [60]), Owner("c" * 64, 0))  # the commit went through


_CLAIMER = r"""
import json, sys
import redis
from facepipe.store.dedup import DedupCache, Owner
from facepipe.core.settings import load_settings

url, name, hashes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = redis.Redis.from_url(url, decode_responses=True)
cache = DedupCache(client, load_settings(redis_url=url, dedup_max_hamming=8))
client.blpop("race:go", timeout=60)
won = []
for i, phash in enumerate(hashes):
    owner = Owner(name, i)
    result = cache.check_and_claim_batch([("race", [(phash, owner)])])[0][0]
    if result.is_duplicate or result.pending:  # the rival's face, confirmed or still claimed
        assert result.matched_owner.image_sha256 != name, result
        won.append(None)
    else:
        assert cache.confirm([("race", [(phash, owner)])]) == 1
        won.append(name)
print(json.dumps(won))
"""


def test_two_processes_claiming_the_same_hashes_claim_each_exactly_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    rng = random.Random(11)
    hashes = [f"{rng.getrandbits(64):016x}" for _ in range(200)]
    outputs = race(_CLAIMER, redis_url, redis_client, ("claimer-one", "claimer-two"), hashes)
    for i, phash in enumerate(hashes):
        winners = [won[i] for won in outputs if won[i] is not None]
        assert len(winners) == 1, f"hash {i} claimed by {winners}"
        assert owner_entry(redis_client, "race", phash) == Owner(winners[0], i).token  # confirmed
