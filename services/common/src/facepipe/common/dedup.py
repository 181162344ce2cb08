"""Global near-duplicate face cache in Redis: exact recall up to DEDUP_MAX_HAMMING, per tenant.

Scheme (multi-index hashing; docs/readme/dedup.md has the full argument):

* the 64-bit pHash is split into ``m`` contiguous chunks; if two hashes differ in at most ``t``
  bits, then by pigeonhole at least one chunk differs in at most ``r = t // m`` bits;
* every remembered hash is added to one sorted set per chunk, keyed by the chunk's value;
  a lookup reads, for each chunk, the sets of every value within ``r`` bit flips of the query's
  chunk, and checks the real Hamming distance of each candidate; so every stored hash within
  ``t`` is found (recall is exact) and nothing farther is ever reported;
* ``(m, r)`` for a threshold comes from :func:`plan_layout` (a fixed cost model, so every
  replica with the same threshold uses the same layout); very large thresholds fall back to
  one set per tenant that is scanned in full, which is exact too.

Keys (all under ``dedup:``, every one scoped by a validated tenant id):

* ``dedup:t:<tenant>:owner:<hash>`` STRING ``<image_sha256>:<face_index>:<event>`` with the TTL:
  the owner of a hash (see :class:`Owner`), and the exact-match index;
* ``dedup:t:<tenant>:m<m>c<i>:<chunk hex>`` ZSET member=hash, score=expiry (ms): chunk index
  ``i`` of layout ``m``; ``dedup:t:<tenant>:all`` is the scan layout's one set;
* ``dedup:t:<tenant>:img:<image_sha256>`` SET of the image's remembered hashes (for deletion).

Expiry is per hash (the ZSET score), so a hash whose TTL passed is never a candidate even
while its chunk set lives on; writes prune expired members and every key carries a TTL.

The check-and-remember of all faces of one message runs in one Lua script: atomic across
replicas, one round trip. An entry remembers its owner (image, face index and ingest event), so
a redelivered message finds its own faces and indexes them again instead of skipping them as
duplicates of themselves, while the same image ingested again later is skipped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb
from typing import NamedTuple

import redis

from facepipe.common.messages import IMAGE_ID_PATTERN
from facepipe.common.settings import Settings
from facepipe.common.tenancy import validate_tenant_id

log = logging.getLogger("facepipe.common.dedup")

HASH_BITS = 64
KEY_ROOT = "dedup:"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_EVENT_ID = re.compile(r"[0-9A-Za-z_.-]{0,64}")

# Cost model of plan_layout: an assumed number of live hashes per tenant, and the cost of one
# candidate (returned member + Hamming check) relative to one set lookup.
ASSUMED_HASHES_PER_TENANT = 1 << 15
CANDIDATE_COST = 2.0


# --- pure helpers ----------------------------------------------------------------------------


def normalize_phash(phash: str) -> str:
    """A 64-bit pHash as 16 lowercase hex characters, or ValueError."""
    value = phash.strip().lower() if isinstance(phash, str) else ""
    if not _HEX16.match(value):
        raise ValueError(f"pHash must be 16 hex characters (64 bits), got {phash!r}")
    return value


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two 64-bit pHashes given as hex."""
    return (int(normalize_phash(a), 16) ^ int(normalize_phash(b), 16)).bit_count()


@dataclass(frozen=True)
class Layout:
    """How hashes are indexed for one threshold: ``chunks`` (offset, width) from the top bit.

    ``scan``: one set per tenant, read in full (no chunks). ``chunks == ()`` and not scan:
    threshold 0, the owner key alone answers exact lookups.
    """

    threshold: int
    chunks: tuple[tuple[int, int], ...]
    radius: int
    scan: bool = False

    @property
    def name(self) -> str:
        return "all" if self.scan else f"m{len(self.chunks)}"

    def lookups_per_hash(self) -> int:
        if self.scan:
            return 1
        return sum(sum(comb(width, i) for i in range(self.radius + 1)) for _, width in self.chunks)


def _split(m: int) -> tuple[tuple[int, int], ...]:
    base, extra = divmod(HASH_BITS, m)
    widths = [base + 1] * extra + [base] * (m - extra)
    offsets = [sum(widths[:i]) for i in range(m)]
    return tuple(zip(offsets, widths, strict=True))


@lru_cache(maxsize=65)
def plan_layout(threshold: int) -> Layout:
    """The cheapest exact layout for ``threshold`` under a fixed cost model (deterministic).

    For m chunks, r = threshold // m guarantees a chunk within r flips (m * (r + 1) > threshold).
    Cost = set lookups + CANDIDATE_COST * expected candidates at ASSUMED_HASHES_PER_TENANT;
    when even the best layout costs more than reading all of a tenant's hashes, scan.
    """
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be 0..64, got {threshold}")
    if threshold == 0:
        return Layout(threshold=0, chunks=(), radius=0)
    best: tuple[float, int] | None = None
    for m in range(2, min(threshold + 1, HASH_BITS) + 1):
        r = threshold // m
        cost = 0.0
        for _, width in _split(m):
            neighbours = sum(comb(width, i) for i in range(r + 1))
            cost += neighbours * (1 + CANDIDATE_COST * ASSUMED_HASHES_PER_TENANT / 2**width)
        if best is None or cost < best[0]:
            best = (cost, m)
    assert best is not None
    if best[0] >= CANDIDATE_COST * ASSUMED_HASHES_PER_TENANT:
        return Layout(threshold=threshold, chunks=(), radius=0, scan=True)
    m = best[1]
    return Layout(threshold=threshold, chunks=_split(m), radius=threshold // m)


def _chunk_value(value: int, offset: int, width: int) -> int:
    return (value >> (HASH_BITS - offset - width)) & ((1 << width) - 1)


def _chunk_suffix(layout: Layout, index: int, chunk: int, width: int) -> str:
    return f"{layout.name}c{index}:{chunk:0{(width + 3) // 4}x}"


def write_suffixes(phash: str, layout: Layout) -> list[str]:
    """The key suffixes (after ``dedup:t:<tenant>:``) a remembered hash is added to."""
    if layout.scan:
        return ["all"]
    value = int(phash, 16)
    return [
        _chunk_suffix(layout, i, _chunk_value(value, offset, width), width)
        for i, (offset, width) in enumerate(layout.chunks)
    ]


@lru_cache(maxsize=256)
def _flip_masks(width: int, radius: int) -> tuple[int, ...]:
    """Every XOR mask of ``width`` bits with at most ``radius`` bits set (0 first)."""
    return tuple(
        sum(1 << bit for bit in bits)
        for flips in range(radius + 1)
        for bits in combinations(range(width), flips)
    )


def lookup_suffixes(phash: str, layout: Layout) -> list[str]:
    """Every set that may hold a hash within the threshold (chunk values within ``radius`` flips)."""
    if layout.scan:
        return ["all"]
    value = int(phash, 16)
    suffixes: list[str] = []
    for i, (offset, width) in enumerate(layout.chunks):
        chunk = _chunk_value(value, offset, width)
        template = f"{layout.name}c{i}:%0{(width + 3) // 4}x"
        suffixes += [template % (chunk ^ mask) for mask in _flip_masks(width, layout.radius)]
    return suffixes


class Owner(NamedTuple):
    """Who a remembered face belongs to (the tenant is the key's scope).

    ``event`` names the ingest event that brought the image in (stable across redeliveries of
    that event, new when the same image is ingested again). A face is never a duplicate of an
    entry with the same owner, event included: a redelivery indexes its faces again, while a
    second run of the same image is skipped as the runbook expects.
    """

    image_sha256: str
    face_index: int
    event: str = ""

    @property
    def token(self) -> str:
        return f"{self.image_sha256}:{self.face_index}:{self.event}"

    @property
    def face_token(self) -> str:
        """The token's prefix common to every event of this face."""
        return f"{self.image_sha256}:{self.face_index}:"

    @classmethod
    def parse(cls, token: str) -> Owner:
        sha, index, event = [*token.split(":", 2), ""][:3]
        return cls(sha, int(index), event)


def _check_owner(owner: Owner) -> Owner:
    sha = owner.image_sha256
    if not isinstance(sha, str) or not _IMAGE_ID.fullmatch(sha):
        raise ValueError(f"image_sha256 {sha!r} cannot be used in a dedup key")
    if int(owner.face_index) < 0:
        raise ValueError(f"face_index must be >= 0, got {owner.face_index}")
    if not isinstance(owner.event, str) or not _EVENT_ID.fullmatch(owner.event):
        raise ValueError(f"event {owner.event!r} must be up to 64 characters of A-Z a-z 0-9 _ . -")
    return Owner(sha, int(owner.face_index), owner.event)


@dataclass(frozen=True)
class DedupResult:
    """Outcome for one face: a duplicate of ``matched_owner`` (whose hash is ``matched_phash``)."""

    is_duplicate: bool
    matched_owner: Owner | None = None
    matched_phash: str | None = None
    distance: int | None = None


NOT_DUPLICATE = DedupResult(False)

# ARGV: mode ('check'|'remember'), key prefix, ttl_ms, max_hamming, face count, then per face:
#   hash, owner token, image-set suffix, n_write, write suffixes..., n_lookup, lookup suffixes...
# Returns per face {is_dup, owner token, matched hash, distance}.
_CHECK_AND_REMEMBER = r"""
local mode, prefix = ARGV[1], ARGV[2]
local ttl, maxd, nfaces = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + ttl

-- popcount of a byte, then of a 32-bit half: four table lookups instead of a loop per bit.
local bytebits = {[0] = 0}
for v = 1, 255 do bytebits[v] = bytebits[bit.rshift(v, 1)] + bit.band(v, 1) end
local function popcount32(x)
  return bytebits[bit.band(x, 255)] + bytebits[bit.band(bit.rshift(x, 8), 255)]
       + bytebits[bit.band(bit.rshift(x, 16), 255)] + bytebits[bit.rshift(x, 24)]
end

local results = {}
local i = 6
for f = 1, nfaces do
  local hash, owner, img = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nwrite = tonumber(ARGV[i + 3])
  local wfirst = i + 4
  local nlook = tonumber(ARGV[wfirst + nwrite])
  local lfirst = wfirst + nwrite + 1
  i = lfirst + nlook

  local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
  local dup_owner, dup_hash, dup_dist = nil, '', -1
  local current = redis.call('GET', prefix .. 'owner:' .. hash)
  if current and current ~= owner then
    dup_owner, dup_hash, dup_dist = current, hash, 0
  elseif not current and maxd > 0 then
    local seen = {}
    local live = '(' .. now
    for k = lfirst, lfirst + nlook - 1 do
      local members = redis.call('ZRANGEBYSCORE', prefix .. ARGV[k], live, '+inf')
      for _, cand in ipairs(members) do
        if cand ~= hash and not seen[cand] then
          seen[cand] = true
          local d = popcount32(bit.bxor(tonumber(string.sub(cand, 1, 8), 16), hi))
                  + popcount32(bit.bxor(tonumber(string.sub(cand, 9, 16), 16), lo))
          if d <= maxd then
            -- A candidate whose owner entry is gone (forgotten) is no longer remembered.
            local o = redis.call('GET', prefix .. 'owner:' .. cand)
            if o and o ~= owner then
              dup_owner, dup_hash, dup_dist = o, cand, d
              break
            end
          end
        end
      end
      if dup_owner then break end
    end
  end

  if dup_owner then
    results[f] = {1, dup_owner, dup_hash, dup_dist}
  else
    if mode == 'remember' then
      redis.call('SET', prefix .. 'owner:' .. hash, owner, 'PX', ttl)
      for k = wfirst, wfirst + nwrite - 1 do
        local key = prefix .. ARGV[k]
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
        redis.call('ZADD', key, expiry, hash)
        redis.call('PEXPIRE', key, ttl)
      end
      redis.call('SADD', prefix .. img, hash)
      redis.call('PEXPIRE', prefix .. img, ttl)
    end
    results[f] = {0, '', '', -1}
  end
end
return results
"""

# ARGV: key prefix, owner-token prefix ('' = any owner), then per hash: hash, n, suffixes...
# Deletes the owner entry (only if the owner matches) and the hash from the given sets.
_FORGET = r"""
local prefix, want = ARGV[1], ARGV[2]
local removed = 0
local i = 3
while i <= #ARGV do
  local hash, n = ARGV[i], tonumber(ARGV[i + 1])
  local okey = prefix .. 'owner:' .. hash
  local current = redis.call('GET', okey)
  if current and (want == '' or string.sub(current, 1, #want) == want) then
    redis.call('DEL', okey)
    for k = i + 2, i + 1 + n do redis.call('ZREM', prefix .. ARGV[k], hash) end
    removed = removed + 1
  end
  i = i + 2 + n
end
return removed
"""


class DedupCache:
    """Tenant-scoped exact + near-duplicate cache of face pHashes (see module doc)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.enabled = settings.enable_global_dedup
        self.max_hamming = settings.dedup_max_hamming
        self.ttl_ms = settings.dedup_ttl_seconds * 1000
        self.layout = plan_layout(self.max_hamming)
        self._check_script = client.register_script(_CHECK_AND_REMEMBER)
        self._forget_script = client.register_script(_FORGET)

    @staticmethod
    def tenant_prefix(tenant_id: str) -> str:
        return f"{KEY_ROOT}t:{validate_tenant_id(tenant_id)}:"

    # --- the pipeline's calls ------------------------------------------------------------

    def should_skip(self, tenant_id: str, phash: str, owner: Owner | None = None) -> bool:
        """Read-only pre-check: is this face a duplicate of a face owned by someone else?

        Writes nothing (a pre-check must not claim a hash that may never be indexed).
        Always False when dedup is disabled.
        """
        if not self.enabled:
            return False
        owner = owner or Owner("-", 0)
        return self._run("check", tenant_id, [(phash, owner)])[0].is_duplicate

    def check_and_remember(self, tenant_id: str, phash: str, owner: Owner) -> tuple[bool, Owner | None]:
        """Atomically: if a near-duplicate of another owner exists, report it; else remember this face."""
        result = self.check_and_remember_many(tenant_id, [(phash, owner)])[0]
        return result.is_duplicate, result.matched_owner

    def remember(self, tenant_id: str, phash: str, owner: Owner) -> bool:
        """The runbook's name: remember unless a duplicate; True when the face is (now) remembered."""
        return not self.check_and_remember(tenant_id, phash, owner)[0]

    def check_and_remember_many(
        self, tenant_id: str, faces: Sequence[tuple[str, Owner]]
    ) -> list[DedupResult]:
        """check_and_remember for the faces of one message, in order, in one script call.

        A later face is also checked against the earlier faces of the same call.
        """
        if not self.enabled or not faces:
            return [NOT_DUPLICATE for _ in faces]
        results = self._run("remember", tenant_id, faces)
        for (phash, owner), result in zip(faces, results, strict=True):
            if result.is_duplicate:
                log.info(
                    "Face %s is near-duplicate (pHash: %s), skipping",
                    owner.face_index,
                    normalize_phash(phash),
                )
                log.debug(
                    "face %s matched %s (pHash %s, distance %s)",
                    owner.token,
                    result.matched_owner and result.matched_owner.token,
                    result.matched_phash,
                    result.distance,
                )
        return results

    def _run(self, mode: str, tenant_id: str, faces: Sequence[tuple[str, Owner]]) -> list[DedupResult]:
        prefix = self.tenant_prefix(tenant_id)
        args: list[str | int] = [mode, prefix, self.ttl_ms, self.max_hamming, len(faces)]
        for phash, owner in faces:
            value = normalize_phash(phash)
            owner = _check_owner(owner)
            writes = write_suffixes(value, self.layout)
            lookups = lookup_suffixes(value, self.layout) if self.max_hamming > 0 else []
            args += [
                value,
                owner.token,
                f"img:{owner.image_sha256}",
                len(writes),
                *writes,
                len(lookups),
                *lookups,
            ]
        raw = self._check_script(keys=[], args=args)
        results = []
        for is_dup, owner_token, matched, distance in raw:
            if int(is_dup):
                token = owner_token.decode() if isinstance(owner_token, bytes) else owner_token
                hash_hex = matched.decode() if isinstance(matched, bytes) else matched
                results.append(DedupResult(True, Owner.parse(token), hash_hex, int(distance)))
            else:
                results.append(NOT_DUPLICATE)
        return results

    # --- deletion and maintenance (work even when dedup is disabled: deletion must be complete)

    def forget(self, tenant_id: str, phash: str, owner: Owner | None = None) -> int:
        """Drop one remembered hash (only if it is ``owner``'s face, any event, when given); 0 or 1."""
        value = normalize_phash(phash)
        want = _check_owner(owner).face_token if owner is not None else ""
        return self._forget(tenant_id, [value], want)

    def forget_image(self, tenant_id: str, image_sha256: str) -> int:
        """Drop every hash remembered for one image of a tenant; returns how many."""
        sha = _check_owner(Owner(image_sha256, 0)).image_sha256
        prefix = self.tenant_prefix(tenant_id)
        image_key = f"{prefix}img:{sha}"
        hashes = sorted(h.decode() if isinstance(h, bytes) else h for h in self.redis.smembers(image_key))
        removed = self._forget(tenant_id, hashes, f"{sha}:") if hashes else 0
        self.redis.delete(image_key)
        return removed

    def _forget(self, tenant_id: str, hashes: Iterable[str], want: str) -> int:
        args: list[str | int] = [self.tenant_prefix(tenant_id), want]
        for value in hashes:
            # Remove from the sets of the current layout; sets of an older layout expire on their own
            # and their members without an owner entry never match.
            suffixes = write_suffixes(value, self.layout) if (self.layout.chunks or self.layout.scan) else []
            args += [value, len(suffixes), *suffixes]
        return int(self._forget_script(keys=[], args=args))

    def _scan_keys(self, tenant_id: str | None) -> Iterable[bytes | str]:
        pattern = f"{self.tenant_prefix(tenant_id)}*" if tenant_id is not None else f"{KEY_ROOT}*"
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
        try:
            return bool(self.redis.ping())
        except Exception:
            return False


def main(argv: list[str] | None = None) -> int:
    """``python -m facepipe.common.dedup {flush [--tenant T] | stats | layout}`` (``make dedup-flush``)."""
    import argparse
    import json

    from facepipe.common.errors import PermanentError
    from facepipe.common.logs import setup_logging
    from facepipe.common.settings import get_settings

    parser = argparse.ArgumentParser(
        prog="python -m facepipe.common.dedup", description="The global dedup cache"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    flush = sub.add_parser("flush", help="delete every dedup:* key (or one tenant's)")
    flush.add_argument("--tenant", default=None, help="only this tenant's keys")
    sub.add_parser("stats", help="print {keys, memory_bytes}")
    sub.add_parser("layout", help="print the index layout of DEDUP_MAX_HAMMING")
    args = parser.parse_args(argv)
    settings = get_settings()
    setup_logging(settings.log_level)
    if args.command == "layout":
        layout = plan_layout(settings.dedup_max_hamming)
        widths = [width for _, width in layout.chunks]
        print(
            json.dumps(
                {
                    "threshold": layout.threshold,
                    "scan": layout.scan,
                    "chunk_bits": widths,
                    "radius": layout.radius,
                    "lookups_per_hash": layout.lookups_per_hash(),
                }
            )
        )
        return 0
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
    cache = DedupCache(client, settings)
    try:
        if args.command == "stats":
            print(json.dumps(cache.stats()))
            return 0
        deleted = cache.flush(args.tenant)
    except PermanentError as exc:
        log.error("%s", exc.message)
        return 2
    except redis.RedisError as exc:
        log.error("Redis at %s: %s", settings.redis_url.split("@")[-1], exc)
        return 1
    log.info("Flushed %d dedup keys (%s)", deleted, f"tenant {args.tenant}" if args.tenant else "all tenants")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
