"""Where a tenant's model-pack migration stands, in Redis: what the backfill, the operator and the CLI share.

The vector store says which collection a tenant searches (its alias); this record says the
rest, for everyone who cannot or need not ask the store:

- ``active``: the pack the tenant searches with (a mirror of the alias, written by whoever
  moves it: the indexer when it first sees the tenant, the backfill when it switches);
- ``target``, ``phase``, ``migrated``/``total``, ``offsets`` (the resume point of each source
  collection), ``skipped``, ``error``, timestamps: the migration in progress or the last one;
- ``previous``: the collections kept for rollback after a switch, each until its deadline.

One Redis hash per tenant, ``packs:<QDRANT_COLLECTION>:{<tenant>}`` (the tenant's Redis Cluster
hash tag, as on every per-tenant key); every write sets only
the fields it changes, so the indexer's ``active`` and the backfill's progress never
overwrite each other. :class:`TenantLock` lets one backfill at a time work on a tenant.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from facepipe.core.redisconn import tagged
from facepipe.core.tenancy import validate_tenant_id

KEY_PREFIX = "packs"
# Phases of a migration. A switch happens between "backfilling" and "switched"; after it the
# backfill only catches up with faces indexed into the old collection meanwhile.
BACKFILLING = "backfilling"
SWITCHED = "switched"
COMPLETE = "complete"
ROLLING_BACK = "rolling_back"
ROLLED_BACK = "rolled_back"
RUNNING_PHASES = frozenset({BACKFILLING, SWITCHED, ROLLING_BACK})
LOCK_TTL_S = 30.0
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now_iso() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime(ISO_FORMAT)


def parse_iso(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, ISO_FORMAT).replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Retained:
    """A collection kept after a switch, so changing back is quick, until ``until`` (ISO time, UTC)."""

    pack: str
    collection: str
    until: str

    def expired(self, at: datetime.datetime | None = None) -> bool:
        return parse_iso(self.until) <= (at or datetime.datetime.now(tz=datetime.UTC))


@dataclass
class MigrationState:
    tenant: str
    active: str = ""
    target: str = ""
    phase: str = ""
    migrated: int = 0
    total: int = 0
    skipped: int = 0  # faces with no crop left in S3 (deleted meanwhile): nothing to re-embed
    faces_per_s: float = 0.0
    offsets: dict[str, str] = field(default_factory=dict)  # source collection -> next page's first id
    previous: list[Retained] = field(default_factory=list)
    started_at: str = ""
    updated_at: str = ""
    finished_at: str = ""
    error: str = ""

    @property
    def running(self) -> bool:
        return bool(self.target) and self.phase in RUNNING_PHASES

    def as_json(self) -> dict[str, Any]:
        """The record as the ops-api and ``facepipe reembed`` show it."""
        return {
            "tenant_id": self.tenant,
            "active_pack": self.active or None,
            "target_pack": self.target or None,
            "phase": self.phase or None,
            "migrated": self.migrated,
            "total": self.total,
            "skipped": self.skipped,
            "faces_per_s": self.faces_per_s,
            "previous": [vars(kept) for kept in self.previous],
            "started_at": self.started_at or None,
            "updated_at": self.updated_at or None,
            "finished_at": self.finished_at or None,
            "error": self.error or None,
        }


_INTS = ("migrated", "total", "skipped")


class MigrationRecords:
    """The records of one collection family (``QDRANT_COLLECTION``) in one Redis."""

    def __init__(self, client: redis.Redis, base: str) -> None:
        self.redis = client
        self.base = base

    def key(self, tenant: str) -> str:
        return f"{KEY_PREFIX}:{self.base}:{tagged(validate_tenant_id(tenant))}"

    def load(self, tenant: str) -> MigrationState | None:
        raw = self.redis.hgetall(self.key(tenant))
        if not raw:
            return None
        fields = {_text(k): _text(v) for k, v in raw.items()}
        state = MigrationState(tenant=tenant)
        for name in ("active", "target", "phase", "started_at", "updated_at", "finished_at", "error"):
            setattr(state, name, fields.get(name, ""))
        for name in _INTS:
            setattr(state, name, int(fields.get(name) or 0))
        state.faces_per_s = float(fields.get("faces_per_s") or 0.0)
        state.offsets = json.loads(fields.get("offsets") or "{}")
        state.previous = [Retained(**item) for item in json.loads(fields.get("previous") or "[]")]
        return state

    def update(self, tenant: str, **values: Any) -> None:
        """Set only these fields (and ``updated_at``)."""
        encoded = {name: _encode(value) for name, value in values.items()}
        encoded["updated_at"] = now_iso()
        self.redis.hset(self.key(tenant), mapping=encoded)

    def note_active(self, tenant: str, pack: str) -> bool:
        """Record the pack a tenant searches with when nothing is recorded yet; True if it was new."""
        return bool(self.redis.hsetnx(self.key(tenant), "active", pack))

    def forget(self, tenant: str) -> None:
        self.redis.delete(self.key(tenant), f"{self.key(tenant)}:lock")

    def lock(self, tenant: str, ttl_s: float = LOCK_TTL_S) -> TenantLock:
        return TenantLock(self.redis, f"{self.key(tenant)}:lock", ttl_s)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _encode(value: Any) -> str:
    if isinstance(value, list):
        return json.dumps([vars(item) if isinstance(item, Retained) else item for item in value])
    if isinstance(value, Mapping):
        return json.dumps(dict(value))
    return str(value)


class LockHeldError(RuntimeError):
    """Another backfill works on this tenant (the message says which process)."""


# Compare-and-act on the lock's token: only the holder renews or releases it.
_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call({}) end return 0"
_RENEW = _IF_HOLDER.format("'pexpire', KEYS[1], ARGV[2]")
_RELEASE = _IF_HOLDER.format("'del', KEYS[1]")


class TenantLock:
    """One backfill per tenant: a Redis key with a time to live, renewed as the work goes on.

    A holder killed with -9 leaves the key until it expires (``ttl_s``), unless it ran on
    this host and its process is gone, in which case the next one takes over at once."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float) -> None:
        self.redis = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}
        self.token = json.dumps({**holder, "nonce": os.urandom(6).hex()})

    def acquire(self, wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            if self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms):
                return
            holder = self.redis.get(self.key)
            if holder is not None and _dead_here(_text(holder)):
                # compare-and-delete: only the dead holder's token is removed
                self.redis.eval(_RELEASE, 1, self.key, _text(holder))
                continue
            if time.monotonic() >= deadline:
                raise LockHeldError(f"another backfill works on this tenant: {_describe(holder)}")
            time.sleep(0.5)

    def renew(self) -> None:
        if not self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
            raise LockHeldError("the backfill lost its tenant lock (it expired and another run took it)")

    def release(self) -> None:
        self.redis.eval(_RELEASE, 1, self.key, self.token)

    @contextlib.contextmanager
    def held(self, wait_s: float = 0.0) -> Iterator[TenantLock]:
        self.acquire(wait_s)
        try:
            yield self
        finally:
            with contextlib.suppress(redis.RedisError):
                self.release()


def _dead_here(token: str) -> bool:
    try:
        holder = json.loads(token)
    except ValueError:
        return False
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe(token: bytes | str | None) -> str:
    if token is None:
        return "(released meanwhile)"
    try:
        holder = json.loads(_text(token))
        return f"process {holder['pid']} on {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return _text(token)
