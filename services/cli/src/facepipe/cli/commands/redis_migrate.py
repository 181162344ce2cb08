"""``facepipe redis-migrate [--dry-run]``: rename the dedup and stats keys a single Redis holds
from the layout before Redis Cluster support (``dedup:t:<tenant>:...``) to the hash-tagged one
(``dedup:t:{<tenant>}:...``). Run it once after upgrading, before starting the new workers
(docs/runtime.md "Redis Cluster"); running it again changes nothing."""

from __future__ import annotations

import argparse

from facepipe.cli.commands.common import Subparsers, add_api_option
from facepipe.cli.output import CliError, console, print_json


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("redis-migrate", help="rename a single Redis's old dedup/stats keys: {tenant} layout")
    p.add_argument("--redis-url", default=None, help="the Redis to migrate (default: the pipeline's)")
    p.add_argument("--dry-run", action="store_true", help="count what would be renamed, change nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_api_option(p)
    p.set_defaults(func=migrate)


def migrate(args: argparse.Namespace) -> int:
    from facepipe.core.redisconn import connect
    from facepipe.store.key_migration import migrate_keys

    if args.redis_url:
        client = connect(args.redis_url, socket_timeout=30, socket_connect_timeout=5)
    else:
        from facepipe.cli.connect import pipeline_redis, resolve

        client = pipeline_redis(resolve(args.api))
    try:
        report = migrate_keys(client, dry_run=args.dry_run)
    except ValueError as exc:  # a Redis Cluster: says where to migrate instead
        raise CliError(str(exc)) from exc
    finally:
        client.close()
    if args.json:
        print_json(report.as_dict())
        return 0
    verb = "Would rename" if args.dry_run else "Renamed"
    console.print(
        f"{verb} {report.renamed} keys of {len(report.tenants)} tenants to the {{tenant}} layout; "
        f"{report.merged} stats keys merged, {len(report.conflicts)} dedup keys left (newer key exists)"
    )
    return 0
