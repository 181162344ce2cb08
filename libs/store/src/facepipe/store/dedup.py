"""Global near-duplicate face cache in Redis: exact recall up to DEDUP_MAX_HAMMING, per tenant.

Scheme (multi-index hashing; the README's "Global deduplication" has the full argument):

* the 64-bit pHash is split into ``m`` contiguous chunks, chunk ``i`` with a flip radius
  ``r_i`` such that ``sum(r_i + 1) > t``; if two hashes differ in at most ``t`` bits, then by
  the generalised pigeonhole some chunk ``i`` differs in at most ``r_i`` bits;
* every remembered hash is appended to one *bucket* per chunk, keyed by the chunk's value;
  a lookup reads, for each chunk, the buckets of every value within ``r_i`` bit flips of the
  query's chunk, and checks the real Hamming distance of each record; so every stored hash
  within ``t`` is found (recall is exact) and nothing farther is ever reported;
* the layout for a threshold comes from :func:`plan_layout` (a fixed cost model, so every
  replica with the same threshold uses the same layout); very large thresholds fall back to
  one bucket per tenant that is scanned in full, which is exact too.

Keys (all under ``dedup:``, every one scoped by a validated tenant id):

* ``dedup:t:<tenant>:owner:<hash>`` STRING ``<image_sha256>:<face_index>:<event>`` with the TTL:
  the owner of a hash (see :class:`Owner`), the exact-match index, and the authority on whether
  a hash is remembered at all;
* ``dedup:t:<tenant>:near:m<m>`` HASH: field ``c<i>:<chunk hex>`` = the bucket of chunk ``i``,
  12-byte records (hash, 8 bytes big-endian; expiry, 4 bytes, unix seconds); field ``seq`` =
  the tenant's write sequence; ``dedup:t:<tenant>:near:all`` (one field ``all``) for the scan;
* ``dedup:t:<tenant>:img:<image_sha256>`` SET of the image's remembered hashes (for deletion).

Why one hash of packed records per tenant, and not a sorted set per bucket: a lookup at the
default threshold reads 57 buckets, and one ``HMGET`` of 57 fields costs Redis a fraction of 57
``ZRANGEBYSCORE`` calls, with a third of the keys and less memory (``make bench``: 297 us of Redis
time per check before, about 45 us now). Records carry their expiry and are dropped when their
bucket is rewritten; the hash's own TTL is refreshed by every write.

The check-and-remember of all faces of one message is one atomic step across replicas: the
buckets are read with plain commands and checked in Python, and a short script commits only if
the tenant's write sequence has not moved (see :meth:`DedupCache._optimistic`); a tenant that
keeps moving gets the whole decision in one Lua script. An entry remembers its owner (image,
face index and ingest event), so a redelivered message finds its own faces and indexes them
again instead of skipping them as duplicates of themselves, while the same image ingested
again later is skipped.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache
from itertools import combinations
from math import comb
from typing import NamedTuple

import redis

from facepipe.core.messages import IMAGE_ID_PATTERN
from facepipe.core.settings import Settings
from facepipe.core.tenancy import validate_tenant_id

log = logging.getLogger("facepipe.store.dedup")

HASH_BITS = 64
RECORD_BYTES = 12  # a bucket record: hash (8 bytes, big-endian), expiry (4 bytes, unix seconds)
# Optimistic reads before falling back to the all-in-Redis script (a tenant written to that often).
OPTIMISTIC_ATTEMPTS = 3
# Writes a tenant's log keeps: a commit whose read is older than the log reaches is refused.
WRITE_LOG_ENTRIES = 32
KEY_ROOT = "dedup:"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_EVENT_ID = re.compile(r"[0-9A-Za-z_.-]{0,64}")

# Cost model of plan_layout, in units of one bucket read inside the script (about 1 us of Redis
# time on the bench machine): a record read and Hamming-checked costs 2.5, rewriting one of the
# hash's own buckets 2. The layout is fixed per threshold (every replica must agree), so it is
# sized for an assumed number of live hashes per tenant: 8192 per TTL. Larger tenants stay exact
# and pay about 2.5 units per 150 more hashes at threshold 8.
ASSUMED_HASHES_PER_TENANT = 1 << 13
CANDIDATE_COST = 2.5
WRITE_COST = 2.0


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
    """How hashes are indexed for one threshold: ``chunks`` (offset, width) from the top bit,
    and the flip radius ``radii[i]`` a lookup reads around chunk ``i``.

    Exact because ``sum(r + 1 for r in radii) > threshold`` (the generalised pigeonhole: two
    hashes whose chunk ``i`` differs in more than ``radii[i]`` bits for every ``i`` differ in more
    than ``threshold`` bits). The stored buckets depend only on the chunks, so thresholds that
    share a chunk count share the stored index.

    ``scan``: one bucket per tenant, read in full (no chunks). ``chunks == ()`` and not scan:
    threshold 0, the owner key alone answers exact lookups.
    """

    threshold: int
    chunks: tuple[tuple[int, int], ...]
    radii: tuple[int, ...]
    scan: bool = False

    @property
    def name(self) -> str:
        return "all" if self.scan else f"m{len(self.chunks)}"

    def lookups_per_hash(self) -> int:
        if self.scan:
            return 1
        return sum(
            _neighbours(width, radius) for (_, width), radius in zip(self.chunks, self.radii, strict=True)
        )


def _split(m: int) -> tuple[tuple[int, int], ...]:
    base, extra = divmod(HASH_BITS, m)
    widths = [base + 1] * extra + [base] * (m - extra)
    offsets = [sum(widths[:i]) for i in range(m)]
    return tuple(zip(offsets, widths, strict=True))


def _neighbours(width: int, radius: int) -> int:
    """Chunk values within ``radius`` flips of one ``width``-bit value (itself included)."""
    return sum(comb(width, i) for i in range(radius + 1))


def _chunk_cost(width: int, radius: int) -> float:
    """Cost model: bucket reads + CANDIDATE_COST * expected records in them."""
    return _neighbours(width, radius) * (1 + CANDIDATE_COST * ASSUMED_HASHES_PER_TENANT / 2**width)


@lru_cache(maxsize=65)
def plan_layout(threshold: int) -> Layout:
    """The cheapest exact layout for ``threshold`` under a fixed cost model (deterministic).

    For m chunks the radii must satisfy ``sum(r_i + 1) > threshold``: every chunk gets
    ``q = (threshold + 1 - m) // m`` and the chunks where one more flip costs least get ``q + 1``
    (at threshold 8 with five chunks: four chunks at radius 1, one at 0: 57 bucket reads instead
    of 69). Cost = bucket reads + CANDIDATE_COST * expected records at ASSUMED_HASHES_PER_TENANT
    + WRITE_COST * chunks;
    when even the best layout costs more than reading all of a tenant's hashes, scan.
    """
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be 0..64, got {threshold}")
    if threshold == 0:
        return Layout(threshold=0, chunks=(), radii=())
    best: tuple[float, tuple[tuple[int, int], ...], tuple[int, ...]] | None = None
    for m in range(2, min(threshold + 1, HASH_BITS) + 1):
        chunks = _split(m)
        base, extra = divmod(threshold + 1 - m, m)
        # Extra flips go to the chunks where they add least cost (ties: the later chunk).
        def raise_cost(i: int, widths: tuple[tuple[int, int], ...] = chunks, r: int = base) -> float:
            return _chunk_cost(widths[i][1], r + 1) - _chunk_cost(widths[i][1], r)

        delta = sorted(range(m), key=lambda i: (raise_cost(i), -i))
        raised = set(delta[:extra])
        radii = tuple(base + 1 if i in raised else base for i in range(m))
        cost = m * WRITE_COST + sum(
            _chunk_cost(width, radius) for (_, width), radius in zip(chunks, radii, strict=True)
        )
        if best is None or cost < best[0]:
            best = (cost, chunks, radii)
    assert best is not None
    if best[0] >= CANDIDATE_COST * ASSUMED_HASHES_PER_TENANT:
        return Layout(threshold=threshold, chunks=(), radii=(), scan=True)
    return Layout(threshold=threshold, chunks=best[1], radii=best[2])


def _chunk_value(value: int, offset: int, width: int) -> int:
    return (value >> (HASH_BITS - offset - width)) & ((1 << width) - 1)


def _bucket_template(index: int, width: int) -> str:
    return f"c{index}:%0{(width + 3) // 4}x"


SCAN_BUCKET = "all"


def own_buckets(phash: str, layout: Layout) -> list[str]:
    """The buckets (fields of the layout's hash) a remembered hash is appended to."""
    if layout.scan:
        return [SCAN_BUCKET]
    value = int(phash, 16)
    return [
        _bucket_template(i, width) % _chunk_value(value, offset, width)
        for i, (offset, width) in enumerate(layout.chunks)
    ]


@lru_cache(maxsize=256)
def _flip_masks(width: int, radius: int) -> tuple[int, ...]:
    """Every non-zero XOR mask of ``width`` bits with at most ``radius`` bits set."""
    return tuple(
        sum(1 << bit for bit in bits)
        for flips in range(1, radius + 1)
        for bits in combinations(range(width), flips)
    )


def lookup_buckets(phash: str, layout: Layout) -> list[str]:
    """Every bucket that may hold a hash within the threshold (chunk ``i`` within ``radii[i]`` flips).

    The hash's own buckets (:func:`own_buckets`) come first, in chunk order: the script
    rewrites them from what it has just read.
    """
    if layout.scan:
        return [SCAN_BUCKET]
    value = int(phash, 16)
    chunks = [_chunk_value(value, offset, width) for offset, width in layout.chunks]
    templates = [_bucket_template(i, width) for i, (_, width) in enumerate(layout.chunks)]
    buckets = [template % chunk for template, chunk in zip(templates, chunks, strict=True)]
    for i, (template, chunk) in enumerate(zip(templates, chunks, strict=True)):
        width, radius = layout.chunks[i][1], layout.radii[i]
        buckets += [template % (chunk ^ mask) for mask in _flip_masks(width, radius)]
    return buckets


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


_BINARY_CLIENTS: weakref.WeakKeyDictionary[redis.ConnectionPool, redis.Redis] = weakref.WeakKeyDictionary()


def _binary_client(client: redis.Redis) -> redis.Redis:
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


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _appended(bucket: bytes, record: bytes, now_s: int) -> bytes:
    """A bucket with the record appended, without expired records and earlier records of the
    same hash (what the scripts' ``appended`` gives)."""
    kept = [
        bucket[pos : pos + RECORD_BYTES]
        for pos in range(0, len(bucket) - RECORD_BYTES + 1, RECORD_BYTES)
        if bucket[pos : pos + 8] != record[:8] and int.from_bytes(bucket[pos + 8 : pos + 12], "big") > now_s
    ]
    return b"".join(kept) + record


# Shared Lua: bucket records and a branch-free popcount (LuaBitOp works on 32-bit halves).
_LUA_RECORDS = r"""
local band, bxor, rshift = bit.band, bit.bxor, bit.rshift
local RECORD = 12  -- hash high 32 bits, low 32 bits, expiry (unix seconds), all big-endian
local function popcount32(x)
  x = x - band(rshift(x, 1), 0x55555555)
  x = band(x, 0x33333333) + band(rshift(x, 2), 0x33333333)
  x = band(x + rshift(x, 4), 0x0F0F0F0F)
  x = x + rshift(x, 8)
  x = x + rshift(x, 16)
  return band(x, 0x3F)
end
-- The bucket without the records of hash (hi, lo) and without the expired ones ('' if none
-- is left), and whether anything was dropped.
local function without(blob, hi, lo, now_s)
  local kept, dropped = {}, false
  for pos = 1, #blob - RECORD + 1, RECORD do
    local chi, clo, cexp = struct.unpack('>I4I4I4', blob, pos)
    if cexp <= now_s or (chi == hi and clo == lo) then
      dropped = true
    else
      kept[#kept + 1] = string.sub(blob, pos, pos + RECORD - 1)
    end
  end
  return table.concat(kept), dropped
end
-- Whether the bucket holds a record of the hash given as its 8 bytes (a plain find, then alignment).
local function holds(blob, key8)
  local from = 1
  while true do
    local pos = string.find(blob, key8, from, true)
    if not pos then return false end
    if (pos - 1) % RECORD == 0 then return true end
    from = pos + 1
  end
end
-- The bucket with this hash's record appended. Usually a plain append: the records are in time
-- order, so the bucket is rebuilt only when its oldest record has expired or the hash is there.
local function appended(old, hi, lo, record, now_s)
  if not old or old == '' then return record end
  if struct.unpack('>I4', old, 9) > now_s and not holds(old, string.sub(record, 1, 8)) then
    return old .. record
  end
  return (without(old, hi, lo, now_s)) .. record
end
-- The tenant's write log (field 'log'): the hashes remembered by the latest writes, each as the
-- write's sequence number (6 bytes) and the hash (8 bytes), oldest first. A commit that read an
-- older sequence is still valid when nothing logged since is near one of its faces.
local LOG_RECORD = 14
local function logged(log, seq, faces, keep)
  local entries = {}
  for _, face in ipairs(faces) do entries[#entries + 1] = struct.pack('>I6I4I4', seq, face[1], face[2]) end
  log = (log or '') .. table.concat(entries)
  if #log > keep * LOG_RECORD then
    -- Keep the newest entries, cut at a write's boundary: the log always holds every entry of
    -- every write from its oldest one on.
    local from = #log - keep * LOG_RECORD + 1
    local cut = struct.unpack('>I6', log, from - LOG_RECORD)
    while from <= #log and struct.unpack('>I6', log, from) == cut do from = from + LOG_RECORD end
    log = string.sub(log, from)
  end
  return log
end
local function changed_since(log, seq_read, faces, maxd)
  if not log or #log == 0 or struct.unpack('>I6', log, 1) > seq_read + 1 then
    return true  -- the log no longer reaches back to the first write after the read
  end
  for pos = 1, #log - LOG_RECORD + 1, LOG_RECORD do
    local seq, chi, clo = struct.unpack('>I6I4I4', log, pos)
    if seq > seq_read then
      for _, face in ipairs(faces) do
        if popcount32(bxor(chi, face[1])) + popcount32(bxor(clo, face[2])) <= maxd then return true end
      end
    end
  end
  return false
end
-- Remember faces of one tenant: each face's owner key and image set, the buckets' new values
-- (fields[j] -> values[j]), and one more write in the tenant's sequence and log, read as state
-- ({seq, log}). A face is {hash high, hash low, hash hex, owner token, image-set key}.
local function remember(prefix, near, faces, state, fields, values, ttl, keep)
  local seq = tonumber(state[1] or '0') + 1
  local expiring = {}
  for _, face in ipairs(faces) do
    redis.call('SET', prefix .. 'owner:' .. face[3], face[4], 'PX', ttl)
    redis.call('SADD', face[5], face[3])
    if not expiring[face[5]] then
      expiring[face[5]] = true
      redis.call('PEXPIRE', face[5], ttl)
    end
  end
  local pairs_ = {'seq', string.format('%d', seq), 'log', logged(state[2], seq, faces, keep)}
  for j = 1, #fields do
    pairs_[#pairs_ + 1] = fields[j]
    pairs_[#pairs_ + 1] = values[j]
  end
  redis.call('HSET', near, unpack(pairs_))
  redis.call('PEXPIRE', near, ttl)
end
-- HMGET of any number of fields (unpack has a C-stack limit); false for a missing field.
local function hmget(key, fields, first, last)
  local values = {}
  for from = first, last, 1000 do
    local part = redis.call('HMGET', key, unpack(fields, from, math.min(from + 999, last)))
    for j = 1, #part do values[#values + 1] = part[j] end
  end
  return values
end
"""

# ARGV: mode ('check'|'remember'), key prefix, layout hash suffix, ttl_ms, max_hamming, face count,
# log entries kept, then per face: hash, owner token, image-set suffix, n_own, n_lookup, lookup buckets...
# (the first n_own lookups are the face's own buckets). Returns per face
# {is_dup, owner token, matched hash, distance}.
_CHECK_AND_REMEMBER = _LUA_RECORDS + r"""
local mode, prefix = ARGV[1], ARGV[2]
local near = prefix .. ARGV[3]
local ttl, maxd, nfaces, keep = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local expiry_s = math.ceil((now_s * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl) / 1000)

local results = {}
local i = 8
for f = 1, nfaces do
  local hash, owner, img = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local nown, nlook = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local first = i + 5
  i = first + nlook

  local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
  local okey = prefix .. 'owner:' .. hash
  local dup_owner, dup_hash, dup_dist = nil, '', -1
  local buckets = {}
  local current = redis.call('GET', okey)
  if current and current ~= owner then
    dup_owner, dup_hash, dup_dist = current, hash, 0
  elseif nlook > 0 then
    buckets = hmget(near, ARGV, first, first + nlook - 1)
    local seen = {}
    for b = 1, nlook do
      local blob = buckets[b]
      if blob then
        for pos = 1, #blob - RECORD + 1, RECORD do
          local chi, clo = struct.unpack('>I4I4', blob, pos)
          local d = popcount32(bxor(chi, hi)) + popcount32(bxor(clo, lo))
          -- d == 0 is this very hash: its owner key (read above) has the answer.
          if d > 0 and d <= maxd then
            local cand = string.format('%08x%08x', chi, clo)
            if not seen[cand] then
              seen[cand] = true
              -- The owner key decides: an expired or forgotten hash is not remembered.
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
  end

  if dup_owner then
    results[f] = {1, dup_owner, dup_hash, dup_dist}
  else
    if mode == 'remember' then
      local record = struct.pack('>I4I4I4', hi, lo, expiry_s)
      local fields, values = {}, {}
      for w = 1, nown do
        fields[w] = ARGV[first + w - 1]
        values[w] = appended(buckets[w], hi, lo, record, now_s)
      end
      -- Every write moves the tenant's sequence and is logged: see _COMMIT.
      local state = redis.call('HMGET', near, 'seq', 'log')
      remember(prefix, near, {{hi, lo, hash, owner, prefix .. img}}, state, fields, values, ttl, keep)
    end
    results[f] = {0, '', '', -1}
  end
end
return results
"""

# ARGV: key prefix, layout hash suffix, owner-token prefix ('' = any owner), then per hash:
# hash, n, own buckets... Deletes the owner entry (only if the owner matches) and the hash's records.
_FORGET = _LUA_RECORDS + r"""
local prefix, want = ARGV[1], ARGV[3]
local near = prefix .. ARGV[2]
local now_s = tonumber(redis.call('TIME')[1])
local removed = 0
local i = 4
while i <= #ARGV do
  local hash, n = ARGV[i], tonumber(ARGV[i + 1])
  local okey = prefix .. 'owner:' .. hash
  local current = redis.call('GET', okey)
  if current and (want == '' or string.sub(current, 1, #want) == want) then
    redis.call('DEL', okey)
    local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
    for k = i + 2, i + 1 + n do
      local old = redis.call('HGET', near, ARGV[k])
      if old then
        local rest, dropped = without(old, hi, lo, now_s)
        if rest == '' then
          redis.call('HDEL', near, ARGV[k])
        elseif dropped then
          redis.call('HSET', near, ARGV[k], rest)
        end
      end
    end
    removed = removed + 1
  end
  i = i + 2 + n
end
return removed
"""

# The optimistic path's commit, for several tenants at once. ARGV: ttl_ms, layout hash suffix,
# max_hamming, log entries kept, group count, then per group (one tenant): key prefix, the
# tenant's sequence as read, face count, and per face: hash, owner token, image-set suffix, n_own,
# own buckets; then the own buckets' new values as the caller computed them from its read (count,
# then field, value pairs). A group is written when its tenant's sequence is unchanged (with the
# caller's values), or when every write logged since the read is farther than max_hamming from
# all of its faces, so those writes cannot have changed its decisions (its records are then
# appended to the buckets as they are now); otherwise nothing of it is written.
# Returns 1 (written) or 0 (refused) per group.
_COMMIT = _LUA_RECORDS + r"""
local ttl, suffix, maxd, keep = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now_s = tonumber(t[1])
local expiry_s = math.ceil((now_s * 1000 + math.floor(tonumber(t[2]) / 1000) + ttl) / 1000)
local written = {}
local i = 6
for g = 1, tonumber(ARGV[5]) do
  local prefix, seq_read, nfaces = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local near = prefix .. suffix
  i = i + 3
  local faces = {}
  for f = 1, nfaces do
    local hash = ARGV[i]
    local nown = tonumber(ARGV[i + 3])
    local hi, lo = tonumber(string.sub(hash, 1, 8), 16), tonumber(string.sub(hash, 9, 16), 16)
    -- remember()'s face, and where its own buckets are in ARGV (from, to)
    faces[f] = {hi, lo, hash, ARGV[i + 1], prefix .. ARGV[i + 2], i + 4, i + 3 + nown}
    i = i + 4 + nown
  end
  local nvalues, values_at = tonumber(ARGV[i]), i + 1
  i = values_at + 2 * nvalues
  local state = redis.call('HMGET', near, 'seq', 'log')
  local seq = tonumber(state[1] or '0')
  local unchanged = seq == seq_read
  -- A sequence below the one read means the tenant's hash expired and started again: refuse.
  local ok = unchanged or (seq > seq_read and not changed_since(state[2], seq_read, faces, maxd))
  if ok then
    local fields, slot = {}, {}
    for _, face in ipairs(faces) do
      for k = face[6], face[7] do
        if not slot[ARGV[k]] then
          fields[#fields + 1] = ARGV[k]
          slot[ARGV[k]] = #fields
        end
      end
    end
    local values = {}
    if unchanged then
      -- Nothing was written since the read: the buckets the caller computed from it are current.
      for k = values_at, values_at + 2 * nvalues - 1, 2 do values[slot[ARGV[k]]] = ARGV[k + 1] end
    else
      if #fields > 0 then values = redis.call('HMGET', near, unpack(fields)) end
      for _, face in ipairs(faces) do
        local record = struct.pack('>I4I4I4', face[1], face[2], expiry_s)
        for k = face[6], face[7] do
          local j = slot[ARGV[k]]
          values[j] = appended(values[j], face[1], face[2], record, now_s)
        end
      end
    end
    remember(prefix, near, faces, state, fields, values, ttl, keep)
  end
  written[g] = ok and 1 or 0
end
return written
"""


@dataclass
class _Call:
    """One tenant's faces checked together, in order (a message, or a batch's messages of one
    tenant), and what the latest read and decision found."""

    prefix: str
    faces: list[tuple[str, Owner]]  # normalized pHash, checked owner
    lookups: list[list[str]]  # per face, the buckets to read (its own first)
    fields: list[str]  # every bucket of the call, once
    seq: str = "0"
    buckets: dict[str, bytes] = dataclass_field(default_factory=dict)
    owners: list[str] = dataclass_field(default_factory=list)
    candidates: list[list[tuple[int, int]]] = dataclass_field(default_factory=list)
    results: list[DedupResult] = dataclass_field(default_factory=list)
    writes: list[tuple[str, Owner]] = dataclass_field(default_factory=list)


class DedupCache:
    """Tenant-scoped exact + near-duplicate cache of face pHashes (see module doc)."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self._binary = _binary_client(client)
        self.enabled = settings.enable_global_dedup
        self.max_hamming = settings.dedup_max_hamming
        self.ttl_ms = settings.dedup_ttl_seconds * 1000
        self.layout = plan_layout(self.max_hamming)
        # lookup_buckets puts a hash's own buckets first: this many (none at threshold 0).
        self.near_key = f"near:{self.layout.name}"  # the tenant's HASH of buckets for this layout
        self._own_buckets = len(own_buckets("0" * 16, self.layout)) if self.max_hamming else 0
        self._check_script = client.register_script(_CHECK_AND_REMEMBER)
        self._forget_script = client.register_script(_FORGET)
        self._commit_script = client.register_script(_COMMIT)

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
        faces = [(phash, owner)]
        results = self._optimistic([self._call(tenant_id, faces)], remember=False)[0]
        return (results or self._run("check", tenant_id, faces))[0].is_duplicate

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
        """check_and_remember for the faces of one message, in order, atomically.

        A later face is also checked against the earlier faces of the same call.
        """
        return self.check_and_remember_batch([(tenant_id, faces)])[0]

    def check_and_remember_batch(
        self, messages: Sequence[tuple[str, Sequence[tuple[str, Owner]]]]
    ) -> list[list[DedupResult]]:
        """check_and_remember_many for several messages ``(tenant, faces)`` in stream order.

        Each message is one atomic step, and sees what the messages before it remembered. The
        whole batch takes two round trips (read, commit; a third when a record is within the
        threshold): the buckets are read with plain commands and checked here, and one short
        script commits each tenant's new faces only if the tenant's sequence is still the one
        read. A tenant whose commit was refused is read again; after OPTIMISTIC_ATTEMPTS, its
        messages are decided inside Redis, one script call each.
        """
        if not self.enabled:
            return [[NOT_DUPLICATE for _ in faces] for _, faces in messages]
        # One call per tenant: its messages' faces in order (a later message sees the earlier).
        by_tenant: dict[str, list[int]] = {}
        for number, (tenant_id, faces) in enumerate(messages):
            if faces:
                by_tenant.setdefault(tenant_id, []).append(number)
        calls = [
            self._call(tenant_id, [face for number in numbers for face in messages[number][1]])
            for tenant_id, numbers in by_tenant.items()
        ]
        outcomes = self._optimistic(calls, remember=True)
        results: list[list[DedupResult]] = [[] for _ in messages]
        for (tenant_id, numbers), outcome in zip(by_tenant.items(), outcomes, strict=True):
            for number in numbers:
                faces = messages[number][1]
                if outcome is None:  # the tenant kept changing under us: decide inside Redis
                    results[number] = self._run("remember", tenant_id, faces)
                else:
                    results[number], outcome = outcome[: len(faces)], outcome[len(faces) :]
                self._log_duplicates(faces, results[number])
        return results

    @staticmethod
    def _log_duplicates(faces: Sequence[tuple[str, Owner]], results: Sequence[DedupResult]) -> None:
        for (phash, owner), result in zip(faces, results, strict=True):
            if result.is_duplicate:
                value = normalize_phash(phash)
                log.info("Face %s is near-duplicate (pHash: %s), skipping", owner.face_index, value)
                log.debug(
                    "face %s matched %s (pHash %s, distance %s)",
                    owner.token,
                    result.matched_owner and result.matched_owner.token,
                    result.matched_phash,
                    result.distance,
                )

    def _call(self, tenant_id: str, faces: Sequence[tuple[str, Owner]]) -> _Call:
        checked = [(normalize_phash(phash), _check_owner(owner)) for phash, owner in faces]
        lookups = [lookup_buckets(value, self.layout) if self.max_hamming > 0 else [] for value, _ in checked]
        fields = list(dict.fromkeys(field for face in lookups for field in face))
        return _Call(self.tenant_prefix(tenant_id), checked, lookups, fields)

    def _optimistic(self, calls: Sequence[_Call], remember: bool) -> list[list[DedupResult] | None]:
        """Read, decide here, commit if unchanged; None for a call whose every commit was refused.

        Why it is atomic: every write to a tenant's entries (commit, the fallback script, forget)
        moves ``seq`` in the tenant's bucket hash. The buckets and ``seq`` come from one HMGET,
        owner keys are read after it, and the commit checks ``seq`` again inside Redis: a write
        that slipped in anywhere after the HMGET fails the commit, one before it was seen.
        Owner keys that expire meanwhile only make a face new, as they would a moment later.
        """
        outcomes: list[list[DedupResult] | None] = [None] * len(calls)
        pending = list(range(len(calls)))
        for _attempt in range(OPTIMISTIC_ATTEMPTS):
            if not pending:
                break
            pipe = self._binary.pipeline(transaction=False)
            for index in pending:
                call = calls[index]
                pipe.hmget(call.prefix + self.near_key, ["seq", *call.fields])  # first: see the docstring
                pipe.mget([f"{call.prefix}owner:{value}" for value, _ in call.faces])
            pipe.time()
            *replies, (seconds, _micros) = pipe.execute()
            reads = [calls[index] for index in pending]
            for number, call in enumerate(reads):
                (seq, *values), owners = replies[2 * number], replies[2 * number + 1]
                call.seq = _text(seq) or "0"
                call.buckets = {f: v for f, v in zip(call.fields, values, strict=True) if v}
                call.owners = [_text(owner) for owner in owners]
                call.candidates = self._candidates(call)
            candidate_owners = self._candidate_owners(reads)
            for call in reads:
                call.results, call.writes = self._decide(call, candidate_owners)
            committing = [index for index in pending if remember and calls[index].writes]
            refused: set[int] = set()
            if committing:
                accepted = self._commit([calls[index] for index in committing], int(seconds))
                refused = {index for index, ok in zip(committing, accepted, strict=True) if not ok}
            for index in pending:
                if index not in refused:
                    outcomes[index] = calls[index].results
            pending = [index for index in pending if outcomes[index] is None]
        return outcomes

    def _candidates(self, call: _Call) -> list[list[tuple[int, int]]]:
        """Per face, (distance, hash) of every stored record within the threshold, nearest first."""
        found = []
        for (value, _), fields in zip(call.faces, call.lookups, strict=True):
            query, near = int(value, 16), set()
            for field in fields:
                blob = call.buckets.get(field, b"")
                for pos in range(0, len(blob) - RECORD_BYTES + 1, RECORD_BYTES):
                    stored = int.from_bytes(blob[pos : pos + 8], "big")
                    distance = (stored ^ query).bit_count()
                    if 0 < distance <= self.max_hamming:  # 0 is this hash: its owner key answers
                        near.add((distance, stored))
            found.append(sorted(near))
        return found

    def _candidate_owners(self, calls: Sequence[_Call]) -> dict[str, str]:
        """Owner tokens of every candidate of the calls, by owner key (one MGET)."""
        keys = list(
            dict.fromkeys(
                f"{call.prefix}owner:{stored:016x}"
                for call in calls
                for face in call.candidates
                for _, stored in face
            )
        )
        if not keys:
            return {}
        return {key: _text(owner) for key, owner in zip(keys, self._binary.mget(keys), strict=True) if owner}

    def _decide(
        self, call: _Call, candidate_owners: dict[str, str]
    ) -> tuple[list[DedupResult], list[tuple[str, Owner]]]:
        """The outcome per face, in order, and the faces to remember (what the script would do)."""
        results: list[DedupResult] = []
        remembered: list[tuple[str, Owner]] = []
        for (value, owner), current, near in zip(call.faces, call.owners, call.candidates, strict=True):
            token = owner.token
            match: tuple[str, int, int] | None = None  # owner token, hash, distance
            if current and current != token:
                match = (current, int(value, 16), 0)
            else:
                # Earlier faces of this call are remembered before this one is checked.
                pending = [
                    ((int(v, 16) ^ int(value, 16)).bit_count(), int(v, 16), o.token) for v, o in remembered
                ]
                stored = [(d, h, candidate_owners.get(f"{call.prefix}owner:{h:016x}", "")) for d, h in near]
                for distance, other, other_token in sorted(pending + stored):
                    if distance <= self.max_hamming and other_token and other_token != token:
                        match = (other_token, other, distance)
                        break
            if match is None:
                results.append(NOT_DUPLICATE)
                remembered.append((value, owner))
            else:
                results.append(DedupResult(True, Owner.parse(match[0]), f"{match[1]:016x}", match[2]))
        return results, remembered

    def _commit(self, calls: Sequence[_Call], now_s: int) -> list[bool]:
        """Remember each call's new faces unless a write since its read may change its decisions;
        one script call for all of them. Returns per call whether it was written."""
        expiry = (now_s * 1000 + self.ttl_ms + 999) // 1000
        args: list[str | int | bytes] = [
            self.ttl_ms, self.near_key, self.max_hamming, WRITE_LOG_ENTRIES, len(calls)
        ]
        for call in calls:
            args += [call.prefix, call.seq, len(call.writes)]
            values: dict[str, bytes] = {}
            for value, owner in call.writes:
                buckets = own_buckets(value, self.layout) if self._own_buckets else []
                args += [value, owner.token, f"img:{owner.image_sha256}", len(buckets), *buckets]
                record = bytes.fromhex(value) + expiry.to_bytes(4, "big")
                for bucket in buckets:
                    current = values.get(bucket, call.buckets.get(bucket, b""))
                    values[bucket] = _appended(current, record, now_s)
            args.append(len(values))
            for bucket, blob in values.items():
                args += [bucket, blob]
        return [bool(int(ok)) for ok in self._commit_script(keys=[], args=args)]

    def _run(self, mode: str, tenant_id: str, faces: Sequence[tuple[str, Owner]]) -> list[DedupResult]:
        return self._results(self._check_script(keys=[], args=self._script_args(mode, tenant_id, faces)))

    def _script_args(self, mode: str, tenant_id: str, faces: Sequence[tuple[str, Owner]]) -> list[str | int]:
        prefix = self.tenant_prefix(tenant_id)
        args: list[str | int] = [
            mode, prefix, self.near_key, self.ttl_ms, self.max_hamming, len(faces), WRITE_LOG_ENTRIES
        ]
        for phash, owner in faces:
            value = normalize_phash(phash)
            owner = _check_owner(owner)
            lookups = lookup_buckets(value, self.layout) if self.max_hamming > 0 else []
            image_set = f"img:{owner.image_sha256}"
            args += [value, owner.token, image_set, self._own_buckets, len(lookups), *lookups]
        return args

    @staticmethod
    def _results(raw: list) -> list[DedupResult]:
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
        args: list[str | int] = [self.tenant_prefix(tenant_id), self.near_key, want]
        for value in hashes:
            # The buckets of the current layout; an older layout's hash expires on its own, and its
            # records without an owner entry never match.
            buckets = own_buckets(value, self.layout) if self._own_buckets else []
            args += [value, len(buckets), *buckets]
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
    """``python -m facepipe.store.dedup {flush [--tenant T] | stats | layout}`` (``make dedup-flush``)."""
    import argparse
    import json

    from facepipe.core.errors import PermanentError
    from facepipe.core.logs import setup_logging
    from facepipe.core.settings import get_settings

    parser = argparse.ArgumentParser(
        prog="python -m facepipe.store.dedup", description="The global dedup cache"
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
                    "radii": list(layout.radii),
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
