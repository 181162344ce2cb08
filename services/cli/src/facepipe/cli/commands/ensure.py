"""``facepipe ensure`` (``make phase3-ensure``): consumer groups, buckets and the Qdrant collection.
Idempotent: what exists is reported and left alone."""

from __future__ import annotations

import argparse

from facepipe.cli.commands.common import Subparsers, add_api_option
from facepipe.cli.connect import Target, pipeline_redis, resolve
from facepipe.cli.output import console
from facepipe.core.settings import Settings
from facepipe.core.worker import ensure_group


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("ensure", help="create buckets, consumer groups and the Qdrant collection")
    add_api_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = resolve(args.api)
    _ensure_groups(target)
    settings = target.settings
    if target.local and settings.qdrant_embedded:
        _ensure_buckets_only(settings)
    else:
        _ensure_buckets_and_collection(settings)
    return 0


def _ensure_groups(target: Target) -> None:
    settings = target.settings
    client = pipeline_redis(target)
    for stream in settings.pipeline_streams:
        created = ensure_group(client, stream, settings.redis_group_name)
        state = "created" if created else "exists"
        console.print(f"consumer group {settings.redis_group_name} on {stream}: {state}")


def _ensure_buckets_only(settings: Settings) -> None:
    """Embedded Qdrant admits one process; the running stack holds it (its indexer makes the collection)."""
    from facepipe.store.storage import ObjectStore

    store = ObjectStore(settings)
    created = store.ensure_buckets()
    console.print(f"buckets: {', '.join(store.buckets)} ({_created(created)})")
    console.print("Qdrant collection: held by the running `facepipe up` (its indexer creates it)")


def _ensure_buckets_and_collection(settings: Settings) -> None:
    from facepipe.store.ensure import ensure_storage_and_collection

    report = ensure_storage_and_collection(settings)
    console.print(f"buckets: {', '.join(report.buckets)} ({_created(report.buckets_created)})")
    console.print(
        f"Qdrant collection {report.collection} ({report.dim}-d): "
        f"{'created' if report.collection_created else 'exists'}"
    )


def _created(buckets: list[str] | tuple[str, ...]) -> str:
    return "created " + ", ".join(buckets) if buckets else "all exist"
