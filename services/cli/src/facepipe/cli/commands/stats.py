"""``facepipe stats [--tenant T]``: counters, timings, stream depth and dedup size (GET /stats)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from facepipe.cli.commands.common import Subparsers, add_api_option, ops_api
from facepipe.cli.output import console, print_json


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("stats", help="counters, timings, stream depth (GET /stats)")
    p.add_argument("--tenant", default=None)
    p.add_argument("--json", action="store_true")
    add_api_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    params = {"tenant_id": args.tenant} if args.tenant else None
    body = ops_api(args).json("GET", "/stats", params=params)
    if args.json:
        print_json(body)
        return 0
    console.print(_counters_table(body["counters"], args.tenant))
    console.print(_timings_table(body["timings_ms"]))
    console.print(_streams_table(body["streams"]))
    console.print(f"dedup: {body['dedup_stats']}")
    return 0


def _counters_table(counters: dict[str, int], tenant: str | None) -> Table:
    table = Table(title="counters" + (f" (tenant {tenant})" if tenant else ""), show_header=False)
    for name, value in counters.items():
        table.add_row(name, str(value))
    return table


def _timings_table(timings_ms: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="timings (ms)")
    for column in ("stage", "count", "total", "avg"):
        table.add_column(column)
    for name, t in timings_ms.items():
        table.add_row(name, str(t["count"]), f"{t['total']:.1f}", f"{t['avg']:.1f}")
    return table


def _streams_table(streams: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="streams")
    for column in ("stream", "length", "lag", "pending", "dlq"):
        table.add_column(column)
    for name, depth in streams.items():
        # No consumer group yet: nothing has been read, so the whole stream is lag.
        groups = depth["groups"] or [{"lag": depth["length"], "pending": 0}]
        table.add_row(
            name,
            str(depth["length"]),
            str(sum(g["lag"] for g in groups)),
            str(sum(g["pending"] for g in groups)),
            str(depth["dlq_length"]),
        )
    return table
