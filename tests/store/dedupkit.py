"""Helpers of the dedup tests: caches of both paths, one-face calls, bit flips."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from facepipe.core.settings import load_settings
from facepipe.store.dedup import HASH_BITS, DedupCache, DedupResult, Face, Owner

A = Owner("a" * 64, 0)
B = Owner("b" * 64, 0)


def cache_factory(redis_client: redis.Redis, redis_url: str, **tuning: int) -> Callable[..., DedupCache]:
    def make(
        enabled: bool = True, max_hamming: int = 8, ttl: int = 3600, claim_ttl: int = 120, **more: int
    ) -> DedupCache:
        settings = load_settings(
            redis_url=redis_url,
            enable_global_dedup=enabled,
            dedup_max_hamming=max_hamming,
            dedup_ttl_seconds=ttl,
            dedup_claim_ttl_seconds=claim_ttl,
        )
        return DedupCache(redis_client, settings, **tuning, **more)

    return make


def remember(cache: DedupCache, tenant: str, phash: str, owner: Owner) -> DedupResult:
    """The batch call with one message of one face."""
    return cache.check_and_remember_batch([(tenant, [(phash, owner)])])[0][0]


def remember_message(cache: DedupCache, tenant: str, faces: list[Face]) -> list[DedupResult]:
    """The batch call with one message."""
    return cache.check_and_remember_batch([(tenant, faces)])[0]


def skips(cache: DedupCache, tenant: str, phash: str, owner: Owner | None = None) -> bool:
    """The read-only lookup's answer."""
    return cache.lookup(tenant, phash, owner).is_duplicate


def flip(phash: str, bits: list[int]) -> str:
    value = int(phash, 16)
    for bit in bits:
        value ^= 1 << (HASH_BITS - 1 - bit)
    return f"{value:016x}"


def between_read_and_commit(
    cache: DedupCache, monkeypatch: pytest.MonkeyPatch, write: Callable[[int], None]
) -> list[int]:
    """Run ``write(read_number)`` after each read of ``cache``, before it decides and commits
    (where another replica's write lands). Returns the list of reads, filled as they happen."""
    decided = cache._optimistic.decide
    reads: list[int] = []

    def racing(*args: object) -> object:
        write(len(reads))
        reads.append(len(reads))
        return decided(*args)

    monkeypatch.setattr(cache._optimistic, "decide", racing)
    return reads


def race(
    script: str, redis_url: str, client: redis.Redis, names: tuple[str, str], hashes: list[str]
) -> list[Any]:
    """Run ``script`` (``python -c``, argv: url, name, hashes as JSON) as two processes released at
    the same moment (they BLPOP ``race:go``); their JSON outputs, in ``names`` order."""
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, redis_url, name, json.dumps(hashes)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    deadline = time.monotonic() + 60
    while client.execute_command("CLIENT", "LIST").count("cmd=blpop") < 2:
        assert time.monotonic() < deadline, "racers did not start"
        assert all(r.poll() is None for r in racers), [r.communicate() for r in racers]
        time.sleep(0.05)
    client.rpush("race:go", "go", "go")
    outputs = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        outputs.append(json.loads(out))
    return outputs
