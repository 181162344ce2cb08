"""``facepipe delete image|tenant``: GDPR deletion through the ops-api (DELETE /images/..., /tenants/...)."""

from __future__ import annotations

import argparse

from facepipe.cli.commands.common import Subparsers, add_api_option, ops_api
from facepipe.cli.output import CliError, console, print_json


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("delete", help="GDPR deletion of one image or a whole tenant")
    del_sub = p.add_subparsers(dest="delete_command", required=True, metavar="image|tenant")
    q = del_sub.add_parser("image", help="one image's faces, artifacts and dedup entries")
    q.add_argument("image_sha256")
    q.add_argument("--tenant", required=True)
    q.add_argument("--json", action="store_true")
    add_api_option(q)
    q.set_defaults(func=delete_image)
    q = del_sub.add_parser("tenant", help="everything of one tenant")
    q.add_argument("tenant")
    q.add_argument("--yes", action="store_true", help="confirm")
    q.add_argument("--json", action="store_true")
    add_api_option(q)
    q.set_defaults(func=delete_tenant)


def delete_image(args: argparse.Namespace) -> int:
    body = ops_api(args).json("DELETE", f"/images/{args.image_sha256}", params={"tenant_id": args.tenant})
    return _report(body, args.json)


def delete_tenant(args: argparse.Namespace) -> int:
    if not args.yes:
        raise CliError(
            f"this deletes every face, artifact and dedup entry of tenant {args.tenant}: "
            "add --yes to confirm",
            code=2,
        )
    return _report(ops_api(args).json("DELETE", f"/tenants/{args.tenant}"), args.json)


def _report(body: dict[str, int | str | None], as_json: bool) -> int:
    if as_json:
        print_json(body)
    else:
        console.print("Deleted: " + ", ".join(f"{k}={v}" for k, v in body.items()), soft_wrap=True)
    return 0
