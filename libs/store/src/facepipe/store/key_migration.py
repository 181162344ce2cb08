"""``facepipe redis-migrate``: rename a single Redis's keys of the layout before Redis Cluster
support to the hash-tagged one.

Before: ``dedup:t:<tenant>:...`` and ``stats:tenant:<tenant>:...``. Now the tenant is the key's
hash tag, ``dedup:t:{<tenant>}:...`` and ``stats:tenant:{<tenant>}:...``, so that everything one
tenant's scripts and MULTIs touch is on one slot of a Redis Cluster. RENAME keeps each key's value
and TTL. Idempotent: keys already in the new layout are left alone, so it can run again.

A key whose new name already exists (the new version ran before the migration): a stats hash
is added into it (counters and timings are sums), a dedup key is left under its old name and
counted as a conflict (the new key is the newer decision; the old one expires with its TTL).
Streams are not renamed: a single Redis keeps working with the streams it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from facepipe.core.redisconn import Client, is_cluster, scan_keys, tagged
from facepipe.core.tenancy import is_valid_tenant_id

# (root, what follows the tenant) of every family of per-tenant keys that gained a hash tag.
FAMILIES = ("dedup:t:", "stats:tenant:")
BATCH = 500


@dataclass
class MigrationReport:
    renamed: int = 0
    merged: int = 0  # stats hashes added into an existing new key
    conflicts: list[str] = field(default_factory=list)  # dedup keys left under their old name
    tenants: set[str] = field(default_factory=set)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "renamed": self.renamed,
            "merged": self.merged,
            "conflicts": len(self.conflicts),
            "tenants": sorted(self.tenants),
            "dry_run": self.dry_run,
        }


def new_name(key: str) -> str | None:
    """The hash-tagged name of an old-layout key; None when it is not one."""
    for root in FAMILIES:
        if not key.startswith(root):
            continue
        tenant, sep, rest = key[len(root) :].partition(":")
        if sep and is_valid_tenant_id(tenant):  # a tagged key's "{t}" is not a valid tenant id
            return f"{root}{tagged(tenant)}:{rest}"
    return None


def migrate_keys(client: Client, *, dry_run: bool = False) -> MigrationReport:
    """Rename every old-layout key of ``client`` (a single Redis) to the hash-tagged layout."""
    if is_cluster(client):
        raise ValueError(
            "redis-migrate renames keys on the single Redis that holds them (a rename cannot cross "
            "cluster slots); migrate there, then move the keys with redis-cli --cluster import"
        )
    report = MigrationReport(dry_run=dry_run)
    batch: list[tuple[str, str]] = []
    for root in FAMILIES:
        for raw in scan_keys(client, f"{root}*"):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            target = new_name(key)
            if target is None:
                continue
            report.tenants.add(target[len(root) + 1 : target.index("}")])
            batch.append((key, target))
            if len(batch) >= BATCH:
                _rename(client, batch, report)
                batch = []
    _rename(client, batch, report)
    return report


def _rename(client: Client, pairs: list[tuple[str, str]], report: MigrationReport) -> None:
    if not pairs:
        return
    if report.dry_run:
        report.renamed += len(pairs)
        return
    pipe = client.pipeline(transaction=False)
    for old, new in pairs:
        pipe.renamenx(old, new)
    for (old, new), done in zip(pairs, pipe.execute(raise_on_error=False), strict=True):
        if done is True or done == 1:
            report.renamed += 1
        elif old.startswith("stats:"):
            _merge_stats(client, old, new)
            report.merged += 1
        else:
            report.conflicts.append(old)


def _merge_stats(client: Client, old: str, new: str) -> None:
    """Add the old hash's counts and totals into the new one, then drop the old."""
    values = client.hgetall(old)
    pipe = client.pipeline(transaction=True)
    for name, value in values.items():
        text = value.decode() if isinstance(value, bytes) else str(value)
        if "." in text or "e" in text.lower():
            pipe.hincrbyfloat(new, name, float(text))
        else:
            pipe.hincrby(new, name, int(text))
    pipe.delete(old)
    pipe.execute()
