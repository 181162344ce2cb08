"""``facepipe demo`` (``make demo``): a throw-away stack, sample faces in, a search out
(the steps themselves are ``facepipe.cli.demo``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from facepipe.cli.commands.common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="start a throw-away local stack, ingest sample faces, search, stop")
    p.add_argument("paths", nargs="*", type=Path, help="extra photos or folders to ingest")
    p.add_argument("--keep", action="store_true", help="keep the stack's data dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facepipe.cli.demo import run_demo

    return run_demo(extra_paths=args.paths, keep=args.keep)
