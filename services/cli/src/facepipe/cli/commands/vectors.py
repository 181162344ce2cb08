"""``facepipe vectors {migrate,optimize} [--data-dir D | --path P]``: care of the embedded vector store.

Both open the store folder for themselves, so they refuse, naming the holder, while a
stack has it open: run them with the stack stopped (``facepipe up`` runs ``optimize`` itself
before it starts the services).

- ``migrate``: convert a folder written by qdrant-client's local mode (the embedded store
  before Qdrant Edge) now; opening the store does the same on first start.
- ``optimize``: merge segments and build the int8 copies of the vectors, which keeps
  searches fast as the store grows (about a minute per million faces; it would freeze a
  serving process, so the store never does it while serving).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facepipe.cli.commands.common import Subparsers
from facepipe.cli.output import CliError, console


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("vectors", help="migrate or optimize the embedded vector store (stack stopped)")
    p.add_argument("action", choices=("migrate", "optimize"))
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", type=Path, help="a `facepipe up` data dir (its qdrant/ folder)")
    where.add_argument("--path", type=Path, help="the store folder itself (default QDRANT_PATH)")
    p.set_defaults(func=run)


def store_path(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return args.data_dir / "qdrant"
    if args.path is not None:
        return args.path
    from facepipe.core.settings import load_settings

    return load_settings().qdrant_path


def run(args: argparse.Namespace) -> int:
    from facepipe.store.vectors.lock import StoreInUseError
    from facepipe.store.vectors.migrate import MigrationError

    path = store_path(args)
    if not path.is_dir():
        raise CliError(f"no vector store at {path}")
    try:
        console.print(migrate(path) if args.action == "migrate" else optimize(path), soft_wrap=True)
    except (StoreInUseError, MigrationError) as exc:
        raise CliError(str(exc)) from None
    return 0


def migrate(path: Path) -> str:
    from facepipe.store.vectors.migrate import migrate_local_store

    report = migrate_local_store(path)
    if report is None:
        return f"{path}: nothing to migrate"
    counts = ", ".join(f"{name} {points} points" for name, points in report.points.items())
    return f"{path}: migrated {counts}"


def optimize(path: Path) -> str:
    from facepipe.store.vectors.edge_engine import optimize_store

    changed = optimize_store(path)
    states = [f"{name} {'optimized' if done else 'already optimal'}" for name, done in changed.items()]
    return f"{path}: {', '.join(states) or 'no collections'}"
