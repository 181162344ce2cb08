"""``facepipe up``: the whole pipeline on this machine (the stack itself is ``facepipe.cli.up``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from facepipe.cli.commands.common import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("up", help="run the whole pipeline locally (Redis, S3, Qdrant, services, ops-api)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where data persists (default $FACEPIPE_DATA_DIR or ./.facepipe)",
    )
    p.add_argument("--port", type=int, default=8001, help="ops-api port (default 8001)")
    p.add_argument("--host", default="127.0.0.1", help="ops-api interface (default 127.0.0.1)")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="do not echo the services' logs (see DATA_DIR/logs)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facepipe.cli.up import default_data_dir, run_up

    return run_up(args.data_dir or default_data_dir(), host=args.host, port=args.port, quiet=args.quiet)
