"""DedupCache: the pipeline's two calls (check-and-remember a batch, a read-only lookup), and
deletion and maintenance of the cache."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Sequence

import redis

from facepipe.core.settings import Settings
from facepipe.store.dedup.config import (
    KEY_ROOT,
    OPTIMISTIC_ATTEMPTS,
    WRITE_LOG_ENTRIES,
    CacheConfig,
    image_set,
    tenant_prefix,
)
from facepipe.store.dedup.layout import Layout, normalize_phash
from facepipe.store.dedup.optimistic import OptimisticCheck, TenantBatch
from facepipe.store.dedup.records import text
from facepipe.store.dedup.results import NOT_DUPLICATE, DedupResult, Face, Owner
from facepipe.store.dedup.scripted import Mode, ScriptedCheck
from facepipe.store.dedup.scripts import Scripts

log = logging.getLogger("facepipe.store.dedup")

# One message to check: its tenant and its faces, in order.
Message = tuple[str, Sequence[Face]]
# The owner a read-only lookup checks for when none is given: it owns no remembered face.
ANYONE = Owner("-", 0)
# The tenant healthy() looks a hash up in (read only: nothing is ever written under it).
HEALTH_PROBE_TENANT = "dedup-health-probe"
# The messages of one tenant batch: (number in the call, checked faces).
_Members = list[tuple[int, list[Face]]]

_BINARY_CLIENTS: weakref.WeakKeyDictionary[redis.ConnectionPool, redis.Redis] = weakref.WeakKeyDictionary()


def binary_client(client: redis.Redis) -> redis.Redis:
    """``client`` itself, or (when it decodes replies) one on the same server that does not:
    bucket records are binary. One per connection pool, so short-lived caches share it."""
    pool = client.connection_pool
    if not pool.connection_kwargs.get("decode_responses"):
        return client
    if pool not in _BINARY_CLIENTS:
        kwargs = {**pool.connection_kwargs, "decode_responses": False}
        _BINARY_CLIENTS[pool] = redis.Redis(
            connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
    return _BINARY_CLIENTS[pool]


class DedupCache:
    """Tenant-scoped exact + near-duplicate cache of face pHashes (see the package doc).

    ``optimistic_attempts`` and ``write_log_entries`` tune the optimistic path (0 attempts: every
    call decided inside Redis, the fallback path).
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        *,
        optimistic_attempts: int = OPTIMISTIC_ATTEMPTS,
        write_log_entries: int = WRITE_LOG_ENTRIES,
    ) -> None:
        self.redis = client
        self.config = CacheConfig.from_settings(
            settings, optimistic_attempts=optimistic_attempts, write_log_entries=write_log_entries
        )
        self._scripts = Scripts.register(client)
        self._optimistic = OptimisticCheck(binary_client(client), self.config, self._scripts.commit)
        self._scripted = ScriptedCheck(self.config, self._scripts.check_and_remember)

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def layout(self) -> Layout:
        return self.config.layout

    @property
    def near_key(self) -> str:
        return self.config.near_key

    @staticmethod
    def tenant_prefix(tenant_id: str) -> str:
        return tenant_prefix(tenant_id)

    # --- the pipeline's calls ------------------------------------------------------------

    def check_and_remember_batch(self, messages: Sequence[Message]) -> list[list[DedupResult]]:
        """For each message ``(tenant, faces)``, in stream order, atomically: a face that is a
        near-duplicate of a face of another owner is reported, every other face is remembered.

        Each message is one atomic step across replicas, and sees what the messages before it
        remembered; a later face is also checked against the earlier faces of its message. The
        whole batch takes two round trips (read, commit; a third when a record is within the
        threshold). A tenant whose commit was refused is read again; after OPTIMISTIC_ATTEMPTS,
        its messages are decided inside Redis, one script call each. Disabled: nothing is read or
        written, and nothing is a duplicate. A bad tenant id raises PermanentError, a bad pHash
        or owner ValueError, before anything is written. A face near only faces others have
        claimed is ``pending`` (see :meth:`check_and_claim_batch`).
        """
        return self._check(messages, Mode.REMEMBER)

    def check_and_claim_batch(self, messages: Sequence[Message]) -> list[list[DedupResult]]:
        """:meth:`check_and_remember_batch` for faces that are about to be indexed: their entries are
        only *claims* until :meth:`confirm` (the faces are indexed) or :meth:`release` (they will
        not be), and a claim that is neither expires after DEDUP_CLAIM_TTL_SECONDS. So a face whose
        message never reaches the index leaves nothing that could hide it later.

        A claim decides nothing about other faces yet: a face near only claimed faces of other
        owners is ``pending`` (neither skipped nor remembered: check it again once they are
        confirmed or released), and so is a face near an earlier face of another message of the
        same call. A face near a confirmed face of another owner is a duplicate, as ever.
        """
        return self._check(messages, Mode.CLAIM)

    def _check(self, messages: Sequence[Message], mode: Mode) -> list[list[DedupResult]]:
        if not self.enabled:
            return [[NOT_DUPLICATE for _ in faces] for _, faces in messages]
        groups = self._by_tenant(messages, claim=mode is Mode.CLAIM)
        outcomes = self._optimistic.run([batch for batch, _ in groups], remember=True)
        results: list[list[DedupResult]] = [[] for _ in messages]
        for (batch, members), outcome in zip(groups, outcomes, strict=True):
            for number, faces in members:
                if outcome is None:  # the tenant kept changing under us: decide inside Redis
                    results[number] = self._scripted.run(mode, batch.prefix, faces)
                else:
                    results[number], outcome = outcome[: len(faces)], outcome[len(faces) :]
                _log_duplicates(faces, results[number])
        return results

    def confirm(self, messages: Sequence[Message]) -> int:
        """The claimed faces are indexed: their entries now suppress near-duplicates for
        DEDUP_TTL_SECONDS. A claim that is gone (expired, released, forgotten by a deletion) is
        not brought back. Returns how many faces hold a confirmed entry of their owner."""
        if not self.enabled:
            return 0
        args: list[str | int] = [self.config.ttl_ms]
        for tenant_id, faces in messages:
            prefix = tenant_prefix(tenant_id)
            for value, owner in _checked(faces):
                args += [prefix, value, owner.token]
        return int(self._scripts.confirm(keys=[], args=args)) if len(args) > 1 else 0

    def release(self, messages: Sequence[Message]) -> int:
        """The claimed faces will not be indexed (their message failed): drop their claims, so
        nothing of them can hide a face. Entries that are not these exact claims stay."""
        if not self.enabled:
            return 0
        released = 0
        for tenant_id, faces in messages:
            checked = _checked(faces)
            if checked:
                released += self._forget(tenant_id, [(v, o.token) for v, o in checked], mode="release")
        return released

    def _by_tenant(
        self, messages: Sequence[Message], claim: bool = False
    ) -> list[tuple[TenantBatch, _Members]]:
        """One batch per tenant, of its messages' faces in order (a later message sees the earlier),
        with those messages: (number, checked faces). Messages without faces take no part."""
        numbers: dict[str, list[int]] = {}
        for number, (tenant_id, faces) in enumerate(messages):
            if faces:
                numbers.setdefault(tenant_id, []).append(number)
        groups = []
        for tenant_id, members in numbers.items():
            prefix = tenant_prefix(tenant_id)
            checked = [(number, _checked(messages[number][1])) for number in members]
            in_order = [face for _, faces in checked for face in faces]
            batch = TenantBatch.of(prefix, in_order, self.config, claim=claim)
            groups.append((batch, checked))
        return groups

    def lookup(self, tenant_id: str, phash: str, owner: Owner | None = None) -> DedupResult:
        """Read-only: is this face a near-duplicate of a face of another owner (than ``owner``)?

        Writes nothing (a pre-check must not claim a hash that may never be indexed). Disabled:
        never a duplicate, and Redis is not asked.
        """
        if not self.enabled:
            return NOT_DUPLICATE
        return self._read_only(tenant_id, phash, owner or ANYONE)

    def _read_only(self, tenant_id: str, phash: str, owner: Owner) -> DedupResult:
        prefix = tenant_prefix(tenant_id)
        faces = _checked([(phash, owner)])
        results = self._optimistic.run([TenantBatch.of(prefix, faces, self.config)], remember=False)[0]
        return (results or self._scripted.run(Mode.CHECK, prefix, faces))[0]

    # --- deletion and maintenance (work even when dedup is disabled: deletion must be complete)

    def forget(self, tenant_id: str, phash: str, owner: Owner | None = None) -> int:
        """Drop one remembered hash (only if it is ``owner``'s face, any event, when given); 0 or 1."""
        value = normalize_phash(phash)
        want = owner.checked().face_token if owner is not None else ""
        return self._forget(tenant_id, [(value, want)])

    def forget_image(self, tenant_id: str, image_sha256: str) -> int:
        """Drop every hash remembered (or claimed) for one image of a tenant, with its bucket
        records and write-log entries; returns how many owner entries were deleted."""
        sha = Owner(image_sha256, 0).checked().image_sha256
        image_key = tenant_prefix(tenant_id) + image_set(sha)
        hashes = sorted(text(h) for h in self.redis.smembers(image_key))
        removed = self._forget(tenant_id, [(h, f"{sha}:") for h in hashes]) if hashes else 0
        self.redis.delete(image_key)
        return removed

    def _forget(self, tenant_id: str, hashes: Iterable[tuple[str, str]], mode: str = "owner") -> int:
        """lua/forget.lua on (hash, wanted owner) pairs: ``owner`` forgets a hash owned by a token
        starting with the wanted one (or by nobody), ``release`` only the exact claim."""
        args: list[str | int] = [tenant_prefix(tenant_id), self.config.near_key, mode]
        for value, want in hashes:
            # The buckets of the current layout; an older layout's hash expires on its own, and its
            # records without an owner entry never match.
            buckets = self.config.own(value)
            args += [value, want, len(buckets), *buckets]
        return int(self._scripts.forget(keys=[], args=args))

    def _scan_keys(self, tenant_id: str | None) -> Iterable[bytes | str]:
        pattern = f"{tenant_prefix(tenant_id)}*" if tenant_id is not None else f"{KEY_ROOT}*"
        return self.redis.scan_iter(match=pattern, count=1000)

    def flush(self, tenant_id: str | None = None) -> int:
        """Delete every dedup key (or one tenant's); returns how many keys were deleted."""
        deleted = 0
        batch: list[bytes | str] = []
        for key in self._scan_keys(tenant_id):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(self.redis.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(self.redis.unlink(*batch))
        return deleted

    def stats(self, memory_sample: int = 1000) -> dict[str, int]:
        """``{"keys": n, "memory_bytes": m}`` for /stats.

        memory_bytes is exact up to ``memory_sample`` keys and extrapolated from that sample beyond.
        """
        keys = 0
        sampled: list[bytes | str] = []
        for key in self._scan_keys(None):
            keys += 1
            if len(sampled) < memory_sample:
                sampled.append(key)
        memory = 0
        if sampled:
            pipe = self.redis.pipeline(transaction=False)
            for key in sampled:
                pipe.memory_usage(key)
            usages = [int(u or 0) for u in pipe.execute()]
            memory = sum(usages) if keys == len(sampled) else round(sum(usages) / len(sampled) * keys)
        return {"keys": keys, "memory_bytes": memory}

    def healthy(self) -> bool:
        """Whether Redis answers the reads a check makes, on the connections checks use (whether
        dedup is enabled or not: deletion needs the cache either way). Writes nothing."""
        try:
            self._read_only(HEALTH_PROBE_TENANT, "0" * 16, ANYONE)
        except Exception:
            return False
        return True


def _checked(faces: Sequence[Face]) -> list[Face]:
    """Normalized pHashes and checked owners, or ValueError."""
    return [(normalize_phash(phash), owner.checked()) for phash, owner in faces]


def _log_duplicates(faces: Sequence[Face], results: Sequence[DedupResult]) -> None:
    for (phash, owner), result in zip(faces, results, strict=True):
        if result.pending:
            log.debug("face %s waits for the claim of %s", owner.token, result.matched_owner)
        if result.is_duplicate:
            log.info("Face %s is near-duplicate (pHash: %s), skipping", owner.face_index, phash)
            log.debug(
                "face %s matched %s (pHash %s, distance %s)",
                owner.token,
                result.matched_owner and result.matched_owner.token,
                result.matched_phash,
                result.distance,
            )
