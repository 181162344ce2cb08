"""What every part of the cache agrees on: the settings it runs with and the names of its keys.

Keys (all under ``dedup:``, every one scoped by a validated tenant id):

* ``dedup:t:<tenant>:owner:<hash>`` STRING ``<image_sha256>:<face_index>:<event>`` with the TTL:
  the owner of a hash (see :class:`~facepipe.store.dedup.results.Owner`), the exact-match index,
  and the authority on whether a hash is remembered at all; ``?<image_sha256>:...`` with
  DEDUP_CLAIM_TTL_SECONDS while it is only claimed (its face is being indexed);
* ``dedup:t:<tenant>:near:m<m>`` HASH: field ``c<i>:<chunk hex>`` = the bucket of chunk ``i``,
  12-byte records (hash, 8 bytes big-endian; expiry, 4 bytes, unix seconds); field ``seq`` =
  the tenant's write sequence, field ``log`` = its latest writes; ``dedup:t:<tenant>:near:all``
  (one field ``all``) for the scan layout;
* ``dedup:t:<tenant>:img:<image_sha256>`` SET of the image's remembered hashes (for deletion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from facepipe.core.settings import Settings
from facepipe.core.tenancy import validate_tenant_id
from facepipe.store.dedup.layout import Layout, lookup_buckets, own_buckets, plan_layout

KEY_ROOT = "dedup:"
# Optimistic reads before falling back to the all-in-Redis script (a tenant written to that often).
OPTIMISTIC_ATTEMPTS = 3
# Writes a tenant's log keeps: a commit whose read is older than the log reaches is refused.
WRITE_LOG_ENTRIES = 32


def tenant_prefix(tenant_id: str) -> str:
    """``dedup:t:<tenant>:``, the prefix of every key of one tenant (PermanentError for a bad id)."""
    return f"{KEY_ROOT}t:{validate_tenant_id(tenant_id)}:"


def owner_key(prefix: str, phash: str) -> str:
    return f"{prefix}owner:{phash}"


def image_set(image_sha256: str) -> str:
    """The suffix (after the tenant prefix) of the set of one image's remembered hashes."""
    return f"img:{image_sha256}"


@dataclass(frozen=True)
class CacheConfig:
    """The cache's settings, and the layout its threshold implies."""

    enabled: bool
    max_hamming: int
    ttl_ms: int
    claim_ttl_ms: int = 120_000  # how long a claim (a face being indexed) lives unconfirmed
    optimistic_attempts: int = OPTIMISTIC_ATTEMPTS
    write_log_entries: int = WRITE_LOG_ENTRIES
    layout: Layout = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layout", plan_layout(self.max_hamming))

    @classmethod
    def from_settings(cls, settings: Settings, **tuning: int) -> CacheConfig:
        return cls(
            enabled=settings.enable_global_dedup,
            max_hamming=settings.dedup_max_hamming,
            ttl_ms=settings.dedup_ttl_seconds * 1000,
            claim_ttl_ms=settings.dedup_claim_ttl_seconds * 1000,
            **tuning,
        )

    @property
    def near_key(self) -> str:
        """The suffix (after the tenant prefix) of the tenant's HASH of buckets for this layout."""
        return f"near:{self.layout.name}"

    def own(self, phash: str) -> list[str]:
        """The buckets a remembered hash is appended to (none at threshold 0)."""
        return own_buckets(phash, self.layout)

    def lookups(self, phash: str) -> list[str]:
        """The buckets a check of ``phash`` reads, its own first (none at threshold 0)."""
        return lookup_buckets(phash, self.layout)

    @cached_property
    def own_count(self) -> int:
        """How many of a hash's lookups are its own buckets (the scripts rewrite those)."""
        return len(self.own("0" * 16))
