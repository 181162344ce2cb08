"""The fallback path: one message's whole decision inside Redis (lua/check_and_remember.lua).

Taken for a tenant whose optimistic commits were refused OPTIMISTIC_ATTEMPTS times (it is written
to that often); one script call per message, each atomic by being a script.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from redis.commands.core import Script

from facepipe.store.dedup.config import CacheConfig, image_set
from facepipe.store.dedup.records import text
from facepipe.store.dedup.results import NOT_DUPLICATE, DedupResult, Face, Owner


class Mode(StrEnum):
    CHECK = "check"  # read only
    REMEMBER = "remember"  # remember every face that is not a duplicate
    CLAIM = "claim"  # remember them as claims (faces being indexed)


class ScriptedCheck:
    def __init__(self, config: CacheConfig, script: Script) -> None:
        self.config = config
        self._script = script

    def run(self, mode: Mode, prefix: str, faces: Sequence[Face]) -> list[DedupResult]:
        """``faces`` (already normalized and checked) of one tenant, in order, atomically."""
        return _results(self._script(keys=[], args=self._args(mode, prefix, faces)))

    def _args(self, mode: Mode, prefix: str, faces: Sequence[Face]) -> list[str | int]:
        config = self.config
        args: list[str | int] = [
            str(mode), prefix, config.near_key, config.ttl_ms, config.max_hamming, len(faces),
            config.write_log_entries, config.claim_ttl_ms,
        ]
        for value, owner in faces:
            lookups = config.lookups(value)
            image = image_set(owner.image_sha256)
            args += [value, owner.token, image, config.own_count, len(lookups), *lookups]
        return args


def _results(raw: list) -> list[DedupResult]:
    """Per face {code (0 new, 1 duplicate, 2 pending), owner token, matched hash, distance}."""
    results = []
    for code, owner_token, matched, distance in raw:
        if int(code) == 0:
            results.append(NOT_DUPLICATE)
            continue
        duplicate, owner = int(code) == 1, Owner.parse(text(owner_token))
        results.append(DedupResult(duplicate, owner, text(matched), int(distance), pending=not duplicate))
    return results
