"""Bucket records as Python reads and writes them (lua/records.lua is the scripts' side).

A bucket is a run of 12-byte records: the hash (8 bytes, big-endian) and its expiry (4 bytes,
unix seconds). Records carry their expiry and are dropped when their bucket is rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator

RECORD_BYTES = 12


def record(phash: str, expiry_s: int) -> bytes:
    return bytes.fromhex(phash) + expiry_s.to_bytes(4, "big")


def stored_hashes(bucket: bytes) -> Iterator[int]:
    """The hash of every record of a bucket, expired ones included (their owner key is gone)."""
    for pos in range(0, len(bucket) - RECORD_BYTES + 1, RECORD_BYTES):
        yield int.from_bytes(bucket[pos : pos + 8], "big")


def appended(bucket: bytes, new: bytes, now_s: int) -> bytes:
    """A bucket with the record appended, without expired records and earlier records of the
    same hash (what the scripts' ``appended`` gives)."""
    kept = [
        bucket[pos : pos + RECORD_BYTES]
        for pos in range(0, len(bucket) - RECORD_BYTES + 1, RECORD_BYTES)
        if bucket[pos : pos + 8] != new[:8] and int.from_bytes(bucket[pos + 8 : pos + 12], "big") > now_s
    ]
    return b"".join(kept) + new


def text(value: bytes | str | None) -> str:
    """A reply of either kind of client as text ('' for nil)."""
    return value.decode() if isinstance(value, bytes) else (value or "")
