"""``facepipe search PHOTO --tenant T``: the photo's faces among a tenant's indexed faces (POST /search)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.table import Table

from facepipe.cli.commands.common import Subparsers, add_api_option, ops_api
from facepipe.cli.output import CliError, console, print_json


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("search", help="find a photo's faces among a tenant's indexed faces")
    p.add_argument("image", type=Path)
    p.add_argument("--tenant", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true")
    add_api_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path: Path = args.image
    if not path.is_file():
        raise CliError(f"{path}: no such file", code=2)
    with path.open("rb") as handle:
        body = ops_api(args).json(
            "POST",
            "/search",
            files={"image": (path.name, handle)},
            data={"tenant_id": args.tenant, "top_k": str(args.top_k)},
        )
    if args.json:
        print_json(body)
    elif not body["faces"]:
        console.print(f"No face found in {path}.")
    else:
        for face in body["faces"]:
            console.print(_matches_table(face, body["tenant_id"]))
    return 0


def _matches_table(face: dict[str, Any], tenant: str) -> Table:
    bbox = ", ".join(f"{v:.0f}" for v in face["bbox"])
    table = Table(title=f"query face {face['index']} (bbox {bbox}) — tenant {tenant}")
    for column in ("score", "image_sha256", "face", "site", "url"):
        table.add_column(column, overflow="fold")
    for match in face["matches"]:
        table.add_row(
            f"{match['score']:.3f}",
            (match["image_sha256"] or "")[:16],
            str(match["face_index"]),
            match["site"],
            _short_url(match["url"]),
        )
    if not face["matches"]:
        table.add_row("-", "no indexed faces for this tenant", "", "", "")
    return table


def _short_url(url: str) -> str:
    """A local file's name (its folder is the same for the whole ingest); other URLs in full."""
    return url.rsplit("/", 1)[-1] if url.startswith("file://") else url
