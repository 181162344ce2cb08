"""Global dedup (the Phase 3 tests/test_phase3_dedup.py, docs/compatibility.md; against a real redis-server).

Recall is checked exhaustively in the sense that matters: for every threshold the Phase 3 runbook
names and every distance up to it, generated pairs (random flips, flips packed into one chunk,
flips spread over all chunks) are found, and pairs one bit beyond are not.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from dedupkit import A, B, between_read_and_commit, flip, race, remember, remember_message, skips

from facepipe.cli.localservers import start_redis
from facepipe.core.errors import PermanentError
from facepipe.core.settings import load_settings
from facepipe.store.dedup import (
    HASH_BITS,
    NOT_DUPLICATE,
    DedupCache,
    DedupResult,
    Owner,
    hamming,
    lookup_buckets,
    normalize_phash,
    own_buckets,
    plan_layout,
)
from facepipe.store.dedup.config import OPTIMISTIC_ATTEMPTS
from facepipe.store.dedup.optimistic import TenantBatch

# --- the Phase 3 test names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("0000000000000000", "0000000000000000", 0),
        ("0000000000000000", "0000000000000001", 1),
        ("0000000000000000", "8000000000000000", 1),
        ("0000000000000000", "000000000000000f", 4),
        ("0000000000000000", "ffffffffffffffff", 64),
        ("ffffffffffffffff", "fffffffffffffffe", 1),
        ("8f373c9c3c9c3c1e", "8f373c9c3c9c3c1e", 0),
        ("8f373c9c3c9c3c1e", "8f373c9c3c9c3c1f", 1),
        ("8f373c9c3c9c3c1e", "0f373c9c3c9c3c1e", 1),
        ("aaaaaaaaaaaaaaaa", "5555555555555555", 64),
        ("00000000ffffffff", "ffffffff00000000", 64),
        ("0123456789abcdef", "0123456789ABCDEF", 0),  # case does not matter
        ("f0f0f0f0f0f0f0f0", "0f0f0f0f0f0f0f0f", 64),
        ("1000000000000001", "0000000000000000", 2),
    ],
)
def test_hamming_distance_table(a: str, b: str, expected: int) -> None:
    assert hamming(a, b) == expected
    assert hamming(b, a) == expected


def test_hamming_rejects_malformed_hashes() -> None:
    for bad in ("", "123", "0123456789abcdeg", "0123456789abcdef0", None):
        with pytest.raises(ValueError):
            normalize_phash(bad)  # type: ignore[arg-type]


def test_should_skip_disabled_always_false(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    enabled = make_cache(enabled=True)
    assert not remember(enabled, "demo", "8f373c9c3c9c3c1e", A).is_duplicate
    assert skips(enabled, "demo", "8f373c9c3c9c3c1e", B)  # the entry really is there

    disabled = make_cache(enabled=False)
    for phash in ("8f373c9c3c9c3c1e", "8f373c9c3c9c3c1f", "0000000000000000"):
        assert skips(disabled, "demo", phash, B) is False
        assert remember(disabled, "demo", phash, B) == NOT_DUPLICATE


def test_remember_then_should_skip_exact_match(make_cache: Callable[..., DedupCache]) -> None:
    cache = make_cache(max_hamming=8)
    assert not skips(cache, "demo", "8f373c9c3c9c3c1e", A)
    assert not remember(cache, "demo", "8f373c9c3c9c3c1e", A).is_duplicate
    assert skips(cache, "demo", "8f373c9c3c9c3c1e", B)
    result = remember(cache, "demo", "8F373C9C3C9C3C1E", B)
    assert (result.is_duplicate, result.matched_owner) == (True, A)


# --- recall --------------------------------------------------------------------------------


def _flip_patterns(threshold: int, distance: int, rng: random.Random) -> list[list[int]]:
    """Bit positions to flip: random ones, all in the first chunk, spread over every chunk."""
    patterns = [rng.sample(range(HASH_BITS), distance) for _ in range(6)]
    layout = plan_layout(threshold)
    if layout.chunks and distance:
        patterns.append(list(range(distance)))  # packed into the first chunk (and on, past its end)
        # Round-robin over the chunks: the worst case for pigeonhole (each chunk gets ~distance/m flips).
        spread: list[int] = []
        cursor = [off for off, _ in layout.chunks]
        for i in range(distance):
            c = i % len(layout.chunks)
            spread.append(cursor[c])
            cursor[c] += 1
        patterns.append(spread)
    return patterns


@pytest.mark.parametrize("threshold", [0, 3, 8, 12])
def test_recall_is_exact_up_to_the_threshold_and_nothing_beyond(
    make_cache: Callable[..., DedupCache], threshold: int
) -> None:
    cache = make_cache(max_hamming=threshold)
    rng = random.Random(threshold)
    pair = 0
    for distance in range(threshold + 3):
        for bits in _flip_patterns(threshold, distance, rng):
            pair += 1
            tenant = f"recall-{threshold}-{pair}"  # one pair per tenant: other pairs cannot interfere
            base = f"{rng.getrandbits(64):016x}"
            variant = flip(base, bits)
            assert hamming(base, variant) == distance
            assert not remember(cache, tenant, base, A).is_duplicate
            result = remember_message(cache, tenant, [(variant, B)])[0]
            if distance <= threshold:
                assert result.is_duplicate, (
                    f"missed a pair at distance {distance} (threshold {threshold}): {bits}"
                )
                assert (result.matched_owner, result.matched_phash, result.distance) == (A, base, distance)
            else:
                assert not result.is_duplicate, f"matched beyond the threshold at distance {distance}"
    assert pair >= 6 * (threshold + 3)


@pytest.mark.parametrize("threshold", range(0, 65))
def test_every_layout_keeps_the_pigeonhole_guarantee(threshold: int) -> None:
    layout = plan_layout(threshold)
    assert layout.threshold == threshold
    if layout.scan or threshold == 0:
        return
    widths = [width for _, width in layout.chunks]
    assert sum(widths) == HASH_BITS
    assert [off for off, _ in layout.chunks] == [sum(widths[:i]) for i in range(len(widths))]
    # Each chunk differing in more than its radius would need more than `threshold` flips.
    assert sum(radius + 1 for radius in layout.radii) > threshold
    base = "8f373c9c3c9c3c1e"
    assert len(set(lookup_buckets(base, layout))) == layout.lookups_per_hash()
    assert set(own_buckets(base, layout)) <= set(lookup_buckets(base, layout))


def test_large_thresholds_fall_back_to_an_exact_scan(make_cache: Callable[..., DedupCache]) -> None:
    assert plan_layout(40).scan
    cache = make_cache(max_hamming=40)
    rng = random.Random(40)
    base = f"{rng.getrandbits(64):016x}"
    remember(cache, "scan", base, A)
    assert skips(cache, "scan", flip(base, rng.sample(range(64), 40)), B)
    assert not skips(cache, "scan", flip(base, rng.sample(range(64), 41)), B)


# --- scoping, owners, expiry --------------------------------------------------------------------


def test_tenants_never_suppress_each_other(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8)
    assert not remember(cache, "tenant-a", "8f373c9c3c9c3c1e", A).is_duplicate
    assert not skips(cache, "tenant-b", "8f373c9c3c9c3c1e", B)
    assert not skips(cache, "tenant-b", "8f373c9c3c9c3c1f", B)
    assert remember(cache, "tenant-b", "8f373c9c3c9c3c1e", B) == NOT_DUPLICATE
    keys = [k.decode() if isinstance(k, bytes) else k for k in redis_client.keys("*")]
    assert keys and all(k.startswith(("dedup:t:tenant-a:", "dedup:t:tenant-b:")) for k in keys)
    for bad in ("a:b", "*", "../x", ""):
        with pytest.raises(PermanentError):
            skips(cache, bad, "8f373c9c3c9c3c1e", B)


def test_redelivery_by_the_same_owner_is_not_a_duplicate(make_cache: Callable[..., DedupCache]) -> None:
    cache = make_cache(max_hamming=8)
    face0, face1 = Owner("c" * 64, 0), Owner("c" * 64, 1)
    first = remember_message(cache, "demo", [("8f373c9c3c9c3c1e", face0), ("0123456789abcdef", face1)])
    assert [r.is_duplicate for r in first] == [False, False]
    again = remember_message(cache, "demo", [("8f373c9c3c9c3c1e", face0), ("0123456789abcdef", face1)])
    assert [r.is_duplicate for r in again] == [False, False]
    # Another image with the same faces is a duplicate, of the right owners.
    other = remember_message(
        cache, "demo", [("8f373c9c3c9c3c1e", B), ("0123456789abcdee", Owner("b" * 64, 1))]
    )
    assert [(r.is_duplicate, r.matched_owner) for r in other] == [(True, face0), (True, face1)]


def test_the_same_face_of_another_ingest_event_is_a_duplicate(make_cache: Callable[..., DedupCache]) -> None:
    cache = make_cache(max_hamming=8)
    first = Owner("c" * 64, 0, "1700000000000-0")
    assert remember(cache, "demo", "8f373c9c3c9c3c1e", first) == NOT_DUPLICATE
    # Redelivery of that event: its own entry, not a duplicate.
    assert remember(cache, "demo", "8f373c9c3c9c3c1e", first) == NOT_DUPLICATE
    # The same image ingested again (a second run): a duplicate of the first event's face.
    again = Owner("c" * 64, 0, "1700000000999-0")
    result = remember(cache, "demo", "8f373c9c3c9c3c1e", again)
    assert (result.is_duplicate, result.matched_owner) == (True, first)
    assert Owner.parse(first.token) == first
    with pytest.raises(ValueError):
        remember(cache, "demo", "8f373c9c3c9c3c1e", Owner("c" * 64, 0, "a:b"))


def test_faces_of_one_call_are_checked_against_each_other(make_cache: Callable[..., DedupCache]) -> None:
    cache = make_cache(max_hamming=4)
    results = remember_message(
        cache, "demo", [("8f373c9c3c9c3c1e", Owner("img", 0)), ("8f373c9c3c9c3c1f", Owner("img", 1))]
    )
    assert [r.is_duplicate for r in results] == [False, True]
    assert results[1].matched_owner == Owner("img", 0)


def test_lookup_writes_nothing(make_cache: Callable[..., DedupCache], redis_client: redis.Redis) -> None:
    cache = make_cache(max_hamming=8)
    assert not skips(cache, "demo", "8f373c9c3c9c3c1e", A)
    assert redis_client.dbsize() == 0


def test_disabled_writes_no_keys(make_cache: Callable[..., DedupCache], redis_client: redis.Redis) -> None:
    cache = make_cache(enabled=False)
    results = remember_message(cache, "demo", [("8f373c9c3c9c3c1e", A), ("8f373c9c3c9c3c1e", B)])
    assert [r.is_duplicate for r in results] == [False, False]
    assert not remember(cache, "demo", "8f373c9c3c9c3c1e", A).is_duplicate
    assert redis_client.dbsize() == 0


def test_entries_expire_after_the_ttl_without_stale_matches(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis, redis_url: str
) -> None:
    cache = make_cache(max_hamming=8, ttl=2)
    old = "8f373c9c3c9c3c1e"
    assert not remember(cache, "demo", old, A).is_duplicate
    assert skips(cache, "demo", flip(old, [0, 20, 40]), B)
    time.sleep(1.0)
    # A later hash sharing old's first chunk refreshes that chunk set's TTL, so `old` stays a member
    # of a live set after its own expiry: its per-member expiry must keep it from matching.
    sharing = flip(old, [30, 31, 50, 51, 60, 61, 62, 63, 40, 41])
    assert hamming(old, sharing) > 8
    assert not remember(cache, "demo", sharing, Owner("d" * 64, 0)).is_duplicate
    shared_bucket = own_buckets(old, cache.layout)[0]
    time.sleep(1.2)
    near = redis.Redis.from_url(redis_url)  # binary records: no decode_responses
    records = near.hget(f"dedup:t:demo:{cache.near_key}", shared_bucket)
    assert any(records[i : i + 8] == bytes.fromhex(old) for i in range(0, len(records), 12))  # still there
    assert not skips(cache, "demo", old, B)
    assert not skips(cache, "demo", flip(old, [0, 20, 40]), B)
    # After the TTL the face is new again: remembered by its new owner.
    assert remember(cache, "demo", old, B) == NOT_DUPLICATE
    time.sleep(2.3)
    assert redis_client.keys("*") == []  # every key carries a TTL


def test_forget_image_removes_only_that_images_entries(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8)
    img = Owner("e" * 64, 0)
    remember_message(
        cache, "demo", [("8f373c9c3c9c3c1e", img), ("0123456789abcdef", Owner(img.image_sha256, 1))]
    )
    remember(cache, "demo", "fedcba9876543210", A)
    assert cache.forget_image("demo", img.image_sha256) == 2
    assert not skips(cache, "demo", "8f373c9c3c9c3c1e", B)
    assert not skips(cache, "demo", "0123456789abcdef", B)
    assert skips(cache, "demo", "fedcba9876543210", B)
    # forget with an owner only removes that owner's entry.
    assert cache.forget("demo", "fedcba9876543210", owner=B) == 0
    assert cache.forget("demo", "fedcba9876543210", owner=A) == 1
    assert not skips(cache, "demo", "fedcba9876543210", B)


def test_flush_one_tenant_or_all_and_stats(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8)
    remember(cache, "t1", "8f373c9c3c9c3c1e", A)
    remember(cache, "t2", "8f373c9c3c9c3c1e", A)
    redis_client.set("stats:counters", "untouched")
    stats = cache.stats()
    assert stats["keys"] == len(redis_client.keys("dedup:*")) > 0
    assert stats["memory_bytes"] > 0

    removed = cache.flush("t1")
    assert removed > 0
    assert not skips(cache, "t1", "8f373c9c3c9c3c1e", B)
    assert skips(cache, "t2", "8f373c9c3c9c3c1e", B)
    cache.flush()
    assert redis_client.keys("dedup:*") == []
    assert redis_client.get("stats:counters") == "untouched"
    assert cache.stats() == {"keys": 0, "memory_bytes": 0}


@pytest.mark.parametrize("attempts", [OPTIMISTIC_ATTEMPTS, 0], ids=["optimistic", "script"])
def test_healthy_is_a_read_only_check_that_fails_when_redis_is_gone(
    attempts: int, redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    for enabled in (True, False):  # deletion needs the cache even when dedup is off
        settings = load_settings(redis_url=redis_url, enable_global_dedup=enabled)
        assert DedupCache(redis_client, settings, optimistic_attempts=attempts).healthy()
    assert redis_client.dbsize() == 0  # it wrote nothing
    server = start_redis(tmp_path)  # a server of its own, to stop
    try:
        client = redis.Redis.from_url(server.url, socket_connect_timeout=2, socket_timeout=10)
        cache = DedupCache(client, load_settings(redis_url=server.url), optimistic_attempts=attempts)
        assert cache.healthy()
    finally:
        server.stop()
    assert cache.healthy() is False


def test_exact_matches_survive_a_threshold_change(make_cache: Callable[..., DedupCache]) -> None:
    remember(make_cache(max_hamming=8), "demo", "8f373c9c3c9c3c1e", A)
    assert skips(make_cache(max_hamming=3), "demo", "8f373c9c3c9c3c1e", B)
    assert skips(make_cache(max_hamming=0), "demo", "8f373c9c3c9c3c1e", B)


# --- atomicity across processes -----------------------------------------------------------------

_RACER = r"""
import json, sys
import redis
from facepipe.store.dedup import DedupCache, Owner
from facepipe.core.settings import load_settings

url, name, hashes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = redis.Redis.from_url(url, decode_responses=True)
cache = DedupCache(client, load_settings(redis_url=url, dedup_max_hamming=8))
client.blpop("race:go", timeout=60)  # both processes start together
won = []
for i, phash in enumerate(hashes):
    result = cache.check_and_remember_batch([("race", [(phash, Owner(name, i))])])[0][0]
    won.append(None if result.is_duplicate else phash)
    if result.is_duplicate:
        assert result.matched_owner.image_sha256 != name, result
print(json.dumps(won))
"""


def test_two_processes_racing_the_same_hashes_remember_each_exactly_once(
    redis_url: str, redis_client: redis.Redis
) -> None:
    rng = random.Random(7)
    hashes = [f"{rng.getrandbits(64):016x}" for _ in range(300)]
    outputs = race(_RACER, redis_url, redis_client, ("racer-one", "racer-two"), hashes)
    for i, phash in enumerate(hashes):
        winners = [won[i] for won in outputs if won[i] is not None]
        assert winners == [phash], f"hash {i}: {len(winners)} processes remembered it"
    owners = {redis_client.get(f"dedup:t:race:owner:{h}").split(":")[0] for h in hashes}
    assert owners <= {"racer-one", "racer-two"}


# --- the optimistic path's commit -----------------------------------------------------------------


def test_a_write_between_the_read_and_the_commit_is_not_missed(
    optimistic_cache: Callable[..., DedupCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, rival = optimistic_cache(max_hamming=8), optimistic_cache(max_hamming=8)
    base = "8f373c9c3c9c3c1e"

    def rival_writes_a_near_face_first(read: int) -> None:
        if read == 0:
            assert not remember(rival, "demo", base, A).is_duplicate

    reads = between_read_and_commit(cache, monkeypatch, rival_writes_a_near_face_first)
    result = remember_message(cache, "demo", [(flip(base, [1, 30, 50]), B)])[0]
    assert (result.is_duplicate, result.matched_owner, result.distance) == (True, A, 3)
    assert len(reads) == 2  # the commit was refused and the face read again


def test_a_far_write_between_the_read_and_the_commit_does_not_refuse_it(
    optimistic_cache: Callable[..., DedupCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, rival = optimistic_cache(max_hamming=8), optimistic_cache(max_hamming=8)
    base = "8f373c9c3c9c3c1e"

    def rival_writes_far_away(read: int) -> None:
        if read == 0:
            assert not remember(rival, "demo", flip(base, list(range(0, 64, 3))), A).is_duplicate  # 22 bits

    reads = between_read_and_commit(cache, monkeypatch, rival_writes_far_away)
    assert not remember(cache, "demo", base, B).is_duplicate
    assert len(reads) == 1  # the log showed the rival's write could not matter: no second read
    assert skips(cache, "demo", flip(base, [7]), A)


def test_the_write_log_is_cut_between_writes_never_inside_one(
    optimistic_cache: Callable[..., DedupCache], monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Both write with a log of two entries.
    cache, rival = (optimistic_cache(max_hamming=8, write_log_entries=2) for _ in range(2))
    rng = random.Random(5)

    def rival_writes_three_faces_at_once(read: int) -> None:
        if read == 0:  # one write of three faces, more than the log keeps: none of it may be kept
            faces = [(f"{rng.getrandbits(64):016x}", Owner("f" * 64, n)) for n in range(3)]
            assert not any(r.is_duplicate for r in remember_message(rival, "demo", faces))

    reads = between_read_and_commit(cache, monkeypatch, rival_writes_three_faces_at_once)
    assert not remember(cache, "demo", "8f373c9c3c9c3c1e", A).is_duplicate
    assert len(reads) == 2  # a log that could miss part of a write refuses; the second read commits
    log = redis.Redis.from_url(redis_url).hget(f"dedup:t:demo:{cache.near_key}", "log")
    assert len(log) == 14 and log[6:] == bytes.fromhex("8f373c9c3c9c3c1e")  # only our own write


def test_a_tenant_that_keeps_changing_falls_back_to_the_script(
    optimistic_cache: Callable[..., DedupCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A log too short to reach back to the read.
    cache, rival = (optimistic_cache(max_hamming=8, write_log_entries=2) for _ in range(2))
    rng = random.Random(3)
    scripted = cache._scripted.run
    scripts: list[int] = []

    def rival_writes_more_than_the_log_keeps(read: int) -> None:
        for n in range(3):
            face = Owner("f" * 64, 3 * read + n)
            assert not remember(rival, "demo", f"{rng.getrandbits(64):016x}", face).is_duplicate

    def script(*args: object) -> list[DedupResult]:
        scripts.append(len(reads))
        return scripted(*args)

    reads = between_read_and_commit(cache, monkeypatch, rival_writes_more_than_the_log_keeps)
    monkeypatch.setattr(cache._scripted, "run", script)
    assert not remember(cache, "demo", "8f373c9c3c9c3c1e", A).is_duplicate
    assert scripts == [OPTIMISTIC_ATTEMPTS]  # the script, once, after every read was refused
    assert skips(cache, "demo", "8f373c9c3c9c3c1f", B)


# --- batches of messages (the indexer's call) ------------------------------------------------------


def test_a_batch_is_the_messages_one_after_another(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(max_hamming=8)
    base = "8f373c9c3c9c3c1e"
    first, second, third = Owner("1" * 64, 0, "e1"), Owner("2" * 64, 0, "e2"), Owner("3" * 64, 0, "e3")
    batch = cache.check_and_remember_batch(
        [
            ("acme", [(base, first), ("0123456789abcdef", Owner(first.image_sha256, 1, "e1"))]),
            ("other", [(base, second)]),  # another tenant: never a duplicate of acme's face
            ("acme", []),
            ("acme", [(flip(base, [2, 40]), third)]),  # a later message sees the first one
        ]
    )
    assert [[r.is_duplicate for r in results] for results in batch] == [[False, False], [False], [], [True]]
    assert (batch[3][0].matched_owner, batch[3][0].distance) == (first, 2)
    # What the batch remembered is what one-by-one calls would have remembered.
    assert skips(cache, "acme", "0123456789abcdef", B)
    assert skips(cache, "other", flip(base, [5]), B)
    assert redis_client.exists(f"dedup:t:acme:owner:{flip(base, [2, 40])}") == 0  # a skipped face isn't kept


def test_a_refused_commit_in_a_batch_only_reruns_that_tenant(
    optimistic_cache: Callable[..., DedupCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, rival = optimistic_cache(max_hamming=8), optimistic_cache(max_hamming=8)
    base = "8f373c9c3c9c3c1e"
    committed = cache._optimistic.commit
    commits: list[list[str]] = []

    def rival_writes_to_acme_first(batches: list[TenantBatch], now_s: int) -> list[bool]:
        if not commits:
            assert not remember(rival, "acme", base, A).is_duplicate
        commits.append([batch.prefix for batch in batches])
        return committed(batches, now_s)

    monkeypatch.setattr(cache._optimistic, "commit", rival_writes_to_acme_first)
    batch = cache.check_and_remember_batch(
        [("acme", [(flip(base, [1, 9]), B)]), ("other", [(base, B)])]
    )
    assert commits == [["dedup:t:acme:", "dedup:t:other:"]]  # acme re-read, then nothing to commit
    assert (batch[0][0].is_duplicate, batch[0][0].matched_owner) == (True, A)
    assert batch[1] == [NOT_DUPLICATE]
    assert skips(cache, "other", base, A)  # other's commit went through the first time


def test_disabled_batches_touch_nothing(
    make_cache: Callable[..., DedupCache], redis_client: redis.Redis
) -> None:
    cache = make_cache(enabled=False)
    assert cache.check_and_remember_batch([("acme", [("8f373c9c3c9c3c1e", A)]), ("acme", [])]) == [
        [NOT_DUPLICATE],
        [],
    ]
    assert redis_client.dbsize() == 0
