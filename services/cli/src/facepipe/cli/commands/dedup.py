"""``facepipe dedup-flush [--tenant T]`` and ``facepipe dedup-stats`` (``make dedup-flush``,
``make dedup-stats``): the global dedup cache in the pipeline's Redis."""

from __future__ import annotations

import argparse

from facepipe.cli.commands.common import Subparsers, add_api_option
from facepipe.cli.connect import pipeline_redis, resolve
from facepipe.cli.output import console, print_json


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("dedup-flush", help="delete the dedup cache (all tenants, or one)")
    p.add_argument("--tenant", default=None)
    add_api_option(p)
    p.set_defaults(func=flush)

    p = sub.add_parser("dedup-stats", help="keys and memory of the dedup cache (all tenants)")
    p.add_argument("--json", action="store_true", help='print {"keys": ..., "memory_bytes": ...} only')
    add_api_option(p)
    p.set_defaults(func=stats)


def flush(args: argparse.Namespace) -> int:
    from facepipe.store.dedup import DedupCache

    target = resolve(args.api)
    deleted = DedupCache(pipeline_redis(target), target.settings).flush(args.tenant)
    scope = f"tenant {args.tenant}" if args.tenant else "all tenants"
    console.print(f"Flushed {deleted} dedup keys ({scope})")
    return 0


def stats(args: argparse.Namespace) -> int:
    from facepipe.store.dedup import DedupCache

    target = resolve(args.api)
    figures = DedupCache(pipeline_redis(target), target.settings).stats()
    if args.json:
        print_json(figures)
    else:
        console.print(f"Dedup cache: {figures['keys']} keys, {figures['memory_bytes']} bytes (all tenants)")
    return 0
