"""``facepipe dlq list|replay``: the dead-letter queues, through the ops-api (GET /dlq, POST /dlq/replay)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.text import Text

from facepipe.cli.commands.common import Subparsers, add_api_option, ops_api
from facepipe.cli.connect import OpsApiClient
from facepipe.cli.output import CliError, console, print_json


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("dlq", help="list or replay dead-letter queue entries")
    dlq_sub = p.add_subparsers(dest="dlq_command", required=True, metavar="list|replay")
    q = dlq_sub.add_parser("list", help="entries of the DLQs (oldest first)")
    q.add_argument("--stream", default=None, help="one pipeline stream (default: all)")
    q.add_argument("--count", type=int, default=100)
    q.add_argument("--json", action="store_true")
    add_api_option(q)
    q.set_defaults(func=list_entries)
    q = dlq_sub.add_parser("replay", help="re-publish entries to their source stream")
    q.add_argument(
        "--stream", default=None, help="pipeline stream whose DLQ to replay (default: every stream)"
    )
    q.add_argument("--id", dest="ids", action="append", default=[], help="entry id (repeatable)")
    q.add_argument("--all", action="store_true", help="every entry of that DLQ")
    q.add_argument("--json", action="store_true")
    add_api_option(q)
    q.set_defaults(func=replay)


def list_entries(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"count": args.count}
    if args.stream:
        params["stream"] = args.stream
    body = ops_api(args).json("GET", "/dlq", params=params)
    if args.json:
        print_json(body)
        return 0
    title = "dead-letter queues: " + ", ".join(f"{k}:dlq {v}" for k, v in body["lengths"].items())
    console.print(title, soft_wrap=True)
    for entry in body["entries"]:
        _print_entry(entry)
    if not body["entries"]:
        console.print("(empty)")
    return 0


def _print_entry(entry: dict[str, Any]) -> None:
    console.print(
        Text(entry["id"], style="bold")
        + Text(f"  {entry['dlq']}  ")
        + Text(entry["reason"], style="red")
        + Text(f"  deliveries={entry['delivery_count']}  source id {entry['source_id']}"),
        soft_wrap=True,
    )
    console.print(Text(f"    {entry['error'][:300]}"), soft_wrap=True)


def replay(args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        raise CliError("give DLQ entry ids (--id ID, repeatable) or --all", code=2)
    api = ops_api(args)
    replayed: dict[str, str] = {}
    missing: set[str] = set(args.ids)
    for stream in _streams_to_replay(api, args.stream):
        body = api.json(
            "POST",
            "/dlq/replay",
            json={"stream": stream, "ids": None if args.all else args.ids, "all": args.all},
        )
        replayed.update(body["replayed"])
        missing -= set(body["replayed"])
    if args.json:
        print_json({"replayed": replayed, "missing": sorted(missing), "count": len(replayed)})
    else:
        console.print(
            f"Replayed {len(replayed)} entries to their source streams"
            + (f"; not found: {', '.join(sorted(missing))}" if missing else ""),
            soft_wrap=True,
        )
    return 0 if not missing else 1


def _streams_to_replay(api: OpsApiClient, stream: str | None) -> list[str]:
    """The stream given, or every pipeline stream the ops-api knows (an id lives in exactly one DLQ)."""
    if stream:
        return [stream]
    return list(api.json("GET", "/dlq", params={"count": 1})["lengths"])
