"""The index layout: which buckets a hash is stored in and read from, for one threshold (no Redis).

Multi-index hashing: the 64-bit pHash is split into ``m`` contiguous chunks, chunk ``i`` with a
flip radius ``r_i`` such that ``sum(r_i + 1) > t``; if two hashes differ in at most ``t`` bits,
then by the generalised pigeonhole some chunk ``i`` differs in at most ``r_i`` bits. A remembered
hash is appended to one bucket per chunk (keyed by the chunk's value); a lookup reads, for each
chunk, the buckets of every value within ``r_i`` flips of the query's chunk. So every stored hash
within ``t`` is found (recall is exact), and the real distance of each record read decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from math import comb

HASH_BITS = 64
SCAN_BUCKET = "all"
_HEX16 = re.compile(r"^[0-9a-f]{16}$")

# Cost model of plan_layout, in units of one bucket read inside the script (about 1 us of Redis
# time on the bench machine): a record read and Hamming-checked costs 2.5, rewriting one of the
# hash's own buckets 2. The layout is fixed per threshold (every replica must agree), so it is
# sized for an assumed number of live hashes per tenant: 8192 per TTL. Larger tenants stay exact
# and pay about 2.5 units per 150 more hashes at threshold 8.
ASSUMED_HASHES_PER_TENANT = 1 << 13
CANDIDATE_COST = 2.5
WRITE_COST = 2.0


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


def _radii(chunks: tuple[tuple[int, int], ...], threshold: int) -> tuple[int, ...]:
    """Every chunk gets ``q = (threshold + 1 - m) // m`` flips, and the chunks where one more flip
    costs least get ``q + 1`` (ties: the later chunk), so that ``sum(r_i + 1) > threshold``."""
    m = len(chunks)
    base, extra = divmod(threshold + 1 - m, m)

    def raise_cost(i: int) -> float:
        width = chunks[i][1]
        return _chunk_cost(width, base + 1) - _chunk_cost(width, base)

    raised = set(sorted(range(m), key=lambda i: (raise_cost(i), -i))[:extra])
    return tuple(base + 1 if i in raised else base for i in range(m))


@lru_cache(maxsize=65)
def plan_layout(threshold: int) -> Layout:
    """The cheapest exact layout for ``threshold`` under a fixed cost model (deterministic).

    At threshold 8 with five chunks: four chunks at radius 1, one at 0: 57 bucket reads instead
    of 69. Cost = bucket reads + CANDIDATE_COST * expected records at ASSUMED_HASHES_PER_TENANT
    + WRITE_COST * chunks; when even the best layout costs more than reading all of a tenant's
    hashes, scan.
    """
    if not 0 <= threshold <= HASH_BITS:
        raise ValueError(f"threshold must be 0..64, got {threshold}")
    if threshold == 0:
        return Layout(threshold=0, chunks=(), radii=())
    best: tuple[float, tuple[tuple[int, int], ...], tuple[int, ...]] | None = None
    for m in range(2, min(threshold + 1, HASH_BITS) + 1):
        chunks = _split(m)
        radii = _radii(chunks, threshold)
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
    buckets = own_buckets(phash, layout)
    value = int(phash, 16)
    for i, ((offset, width), radius) in enumerate(zip(layout.chunks, layout.radii, strict=True)):
        template, chunk = _bucket_template(i, width), _chunk_value(value, offset, width)
        buckets += [template % (chunk ^ mask) for mask in _flip_masks(width, radius)]
    return buckets
