"""``facepipe ready``: the readiness checks (GET /ready); exit 1 when not ready."""

from __future__ import annotations

import argparse

from rich.text import Text

from facepipe.cli.commands.common import Subparsers, add_api_option, ops_api
from facepipe.cli.output import console, print_json


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("ready", help="readiness checks (GET /ready); exit 1 when not ready")
    p.add_argument("--json", action="store_true")
    add_api_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    response = ops_api(args).request("GET", "/ready")
    body = response.json()
    if args.json:
        print_json(body)
    else:
        for name, state in body["checks"].items():
            style = "green" if state == "healthy" else "red"
            detail = body.get("errors", {}).get(name, "")
            console.print(Text(f"{name:<12} ", style="bold") + Text(state, style=style) + Text(f"  {detail}"))
        console.print(f"provider: {body.get('provider')}   model pack: {body.get('model_pack')}")
    return 0 if response.status_code == 200 else 1
