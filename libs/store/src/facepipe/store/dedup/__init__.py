"""Global near-duplicate face cache in Redis: exact recall up to DEDUP_MAX_HAMMING, per tenant.

Scheme (multi-index hashing, see :mod:`.layout`): every remembered hash is appended to one
*bucket* per chunk of its 64 bits; a lookup reads the buckets of every chunk value within the
chunk's flip radius and checks the real Hamming distance of each record, so every stored hash
within the threshold is found and nothing farther is ever reported. Very large thresholds fall
back to one bucket per tenant that is scanned in full, which is exact too. Keys: :mod:`.config`.

Why one hash of packed records per tenant, and not a sorted set per bucket: a lookup at the
default threshold reads 57 buckets, and one ``HMGET`` of 57 fields costs Redis a fraction of 57
``ZRANGEBYSCORE`` calls, with a third of the keys and less memory (``make bench``: 297 us of Redis
time per check before, about 45 us now). The hash's own TTL is refreshed by every write.

The check-and-remember of all faces of one message is one atomic step across replicas: the
buckets are read with plain commands and checked in Python, and a short script commits only if
the tenant's write sequence has not moved (:mod:`.optimistic`); a tenant that keeps moving gets
the whole decision in one Lua script (:mod:`.scripted`; the scripts are in ``lua/``). An entry
remembers its owner (image, face index and ingest event), so a redelivered message finds its own
faces and indexes them again instead of skipping them as duplicates of themselves, while the
same image ingested again later is skipped.

Modules: layout (pure maths), results (Owner, DedupResult), config (settings and key names),
records (bucket records), scripts (loads lua/), optimistic and scripted (the two paths of a
check), cache (:class:`DedupCache`, what callers use).
"""

from facepipe.store.dedup.cache import DedupCache, Message
from facepipe.store.dedup.layout import (
    HASH_BITS,
    Layout,
    hamming,
    lookup_buckets,
    normalize_phash,
    own_buckets,
    plan_layout,
)
from facepipe.store.dedup.results import NOT_DUPLICATE, DedupResult, Face, Owner

__all__ = [
    "HASH_BITS",
    "NOT_DUPLICATE",
    "DedupCache",
    "DedupResult",
    "Face",
    "Layout",
    "Message",
    "Owner",
    "hamming",
    "lookup_buckets",
    "normalize_phash",
    "own_buckets",
    "plan_layout",
]
