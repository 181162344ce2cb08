"""The usual path: read the buckets with plain commands, decide here, commit if nothing moved.

Why it is atomic: every write that remembers faces (a commit, the all-in-Redis script) moves
``seq`` in the tenant's bucket hash and logs the hashes. The buckets and ``seq`` come from one
HMGET, owner keys are read after it, and the commit (lua/commit.lua) checks ``seq`` again inside
Redis: a write that slipped in anywhere after the HMGET fails the commit, one before it was seen.
A commit whose tenant moved is still taken when the tenant's write log shows that nothing written
since is within the threshold of its faces. Owner keys that expire or are forgotten meanwhile only
make a face new, as they would a moment later (a bucket rewritten from the read may keep a
forgotten hash's record, which never matches: its owner key is gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import redis
from redis.commands.core import Script

from facepipe.store.dedup.config import CacheConfig, image_set, owner_key
from facepipe.store.dedup.records import appended, record, stored_hashes, text
from facepipe.store.dedup.results import CLAIM_MARK, NOT_DUPLICATE, DedupResult, Face, Owner, owner_value


@dataclass
class TenantBatch:
    """One tenant's faces checked together, in order (a message, or a batch's messages of one
    tenant), and what the latest read and decision found."""

    prefix: str  # the tenant's key prefix
    faces: list[Face]  # normalized pHash, checked owner
    lookups: list[list[str]]  # per face, the buckets to read (its own first)
    fields: list[str]  # every bucket of the batch, once
    # Remember new faces as claims (being indexed); an earlier face of another message then only
    # makes a later one pending, since that message may not be indexed after all.
    claim: bool = False
    seq: str = "0"
    buckets: dict[str, bytes] = field(default_factory=dict)
    owners: list[str] = field(default_factory=list)  # per face, the owner token of its own hash
    candidates: list[list[tuple[int, int]]] = field(default_factory=list)  # per face (distance, hash)
    results: list[DedupResult] = field(default_factory=list)
    writes: list[Face] = field(default_factory=list)  # the faces to remember

    @classmethod
    def of(cls, prefix: str, faces: list[Face], config: CacheConfig, claim: bool = False) -> TenantBatch:
        """``faces`` already normalized and checked."""
        lookups = [config.lookups(value) for value, _ in faces]
        fields = list(dict.fromkeys(bucket for face in lookups for bucket in face))
        return cls(prefix, faces, lookups, fields, claim)


class OptimisticCheck:
    """Read, decide, commit for several tenant batches at once (two or three round trips)."""

    def __init__(self, client: redis.Redis, config: CacheConfig, commit_script: Script) -> None:
        self.redis = client  # one that does not decode replies: bucket records are binary
        self.config = config
        self._commit_script = commit_script

    def run(self, batches: Sequence[TenantBatch], remember: bool) -> list[list[DedupResult] | None]:
        """The results per batch; None for a batch whose every commit was refused."""
        outcomes: list[list[DedupResult] | None] = [None] * len(batches)
        pending = list(range(len(batches)))
        for _attempt in range(self.config.optimistic_attempts):
            if not pending:
                break
            reads = [batches[index] for index in pending]
            now_s = self._read(reads)
            candidate_owners = self._candidate_owners(reads)
            for batch in reads:
                batch.results, batch.writes = self.decide(batch, candidate_owners)
            committing = [index for index in pending if remember and batches[index].writes]
            refused: set[int] = set()
            if committing:
                accepted = self.commit([batches[index] for index in committing], now_s)
                refused = {index for index, ok in zip(committing, accepted, strict=True) if not ok}
            for index in pending:
                if index not in refused:
                    outcomes[index] = batches[index].results
            pending = [index for index in pending if outcomes[index] is None]
        return outcomes

    def _read(self, batches: Sequence[TenantBatch]) -> int:
        """Fill each batch's ``seq``, buckets, owners and candidates (one pipeline); Redis's time."""
        pipe = self.redis.pipeline(transaction=False)
        for batch in batches:
            pipe.hmget(batch.prefix + self.config.near_key, ["seq", *batch.fields])  # first: module doc
            pipe.mget([owner_key(batch.prefix, value) for value, _ in batch.faces])
        pipe.time()
        *replies, (seconds, _micros) = pipe.execute()
        for number, batch in enumerate(batches):
            (seq, *values), owners = replies[2 * number], replies[2 * number + 1]
            batch.seq = text(seq) or "0"
            batch.buckets = {f: v for f, v in zip(batch.fields, values, strict=True) if v}
            batch.owners = [text(owner) for owner in owners]
            batch.candidates = self._candidates(batch)
        return int(seconds)

    def _candidates(self, batch: TenantBatch) -> list[list[tuple[int, int]]]:
        """Per face, (distance, hash) of every stored record within the threshold, nearest first."""
        found = []
        for (value, _), fields in zip(batch.faces, batch.lookups, strict=True):
            query, near = int(value, 16), set()
            for bucket in fields:
                for stored in stored_hashes(batch.buckets.get(bucket, b"")):
                    distance = (stored ^ query).bit_count()
                    if 0 < distance <= self.config.max_hamming:  # 0 is this hash: its owner key answers
                        near.add((distance, stored))
            found.append(sorted(near))
        return found

    def _candidate_owners(self, batches: Sequence[TenantBatch]) -> dict[str, str]:
        """Owner tokens of every candidate of the batches, by owner key (one MGET)."""
        keys = list(
            dict.fromkeys(
                owner_key(batch.prefix, f"{stored:016x}")
                for batch in batches
                for face in batch.candidates
                for _, stored in face
            )
        )
        if not keys:
            return {}
        return {key: text(owner) for key, owner in zip(keys, self.redis.mget(keys), strict=True) if owner}

    def decide(
        self, batch: TenantBatch, candidate_owners: dict[str, str]
    ) -> tuple[list[DedupResult], list[Face]]:
        """The outcome per face, in order, and the faces to remember (what the script would do)."""
        results: list[DedupResult] = []
        remembered: list[Face] = []
        writes: list[Face] = []
        for (value, owner), current, near in zip(batch.faces, batch.owners, batch.candidates, strict=True):
            match = self._match(
                batch.prefix, value, owner, current, near, remembered, candidate_owners, batch.claim
            )
            results.append(match or NOT_DUPLICATE)
            if match is None:
                remembered.append((value, owner))
                # A claim never downgrades this owner's confirmed entry (a redelivery of an indexed face).
                if not (batch.claim and current == owner.token):
                    writes.append((value, owner))
        return results, writes

    def _match(
        self,
        prefix: str,
        value: str,
        owner: Owner,
        current: str,
        near: list[tuple[int, int]],
        remembered: list[Face],
        candidate_owners: dict[str, str],
        claim: bool,
    ) -> DedupResult | None:
        """The nearest remembered face of another owner within the threshold (a duplicate), else
        the nearest claimed one (pending), else None: the hash's own entry, an earlier face of
        this batch (remembered before this one is checked), or a stored one."""
        token = owner.token
        query = int(value, 16)
        # (distance, hash, owner token, only claimed)
        found = [(0, query, *owner_value(current))] if current else []
        # An earlier face of this call is only claimed, in a claiming call, until it is indexed.
        found += [((int(v, 16) ^ query).bit_count(), int(v, 16), o.token, claim) for v, o in remembered]
        for distance, other in near:
            stored = candidate_owners.get(owner_key(prefix, f"{other:016x}"), "")
            if stored:
                found.append((distance, other, *owner_value(stored)))
        pending: DedupResult | None = None
        for distance, other, other_token, claimed in sorted(found):
            if distance > self.config.max_hamming or other_token == token:
                continue
            other_owner = Owner.parse(other_token)
            # A face of the same message is indexed (or fails) together with this one: decided.
            decided = not claimed or other_owner.same_message(owner)
            matched = DedupResult(decided, other_owner, f"{other:016x}", distance, not decided)
            if decided:
                return matched
            pending = pending or matched
        return pending

    def commit(self, batches: Sequence[TenantBatch], now_s: int) -> list[bool]:
        """Remember each batch's new faces (as claims for a claiming batch) unless a write since its
        read may change its decisions; one script call for all of them. Returns per batch whether
        it was written."""
        config = self.config
        expiry = (now_s * 1000 + config.ttl_ms + 999) // 1000
        args: list[str | int | bytes] = [
            config.ttl_ms, config.near_key, config.max_hamming, config.write_log_entries, len(batches)
        ]
        for batch in batches:
            owner_ttl, mark = (config.claim_ttl_ms, CLAIM_MARK) if batch.claim else (config.ttl_ms, "")
            args += [batch.prefix, batch.seq, owner_ttl, len(batch.writes)]
            values: dict[str, bytes] = {}
            for value, owner in batch.writes:
                buckets = config.own(value)
                args += [value, mark + owner.token, image_set(owner.image_sha256), len(buckets), *buckets]
                for bucket in buckets:
                    current = values.get(bucket, batch.buckets.get(bucket, b""))
                    values[bucket] = appended(current, record(value, expiry), now_s)
            args.append(len(values))
            for bucket, blob in values.items():
                args += [bucket, blob]
        return [bool(int(ok)) for ok in self._commit_script(keys=[], args=args)]
