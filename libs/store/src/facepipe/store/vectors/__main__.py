"""``python -m facepipe.store.vectors {migrate,optimize} [--path DIR]``: offline care of the embedded store.

Both open the store folder (default ``QDRANT_PATH``) for themselves, so they refuse, naming
the holder, while the stack has it open: run them with the stack stopped.

- ``migrate``: convert a folder written by qdrant-client's local mode (the embedded store
  before Qdrant Edge) now; opening the store does the same on first start.
- ``optimize``: merge segments and build the int8 copies of the vectors, which keeps
  searches fast as the store grows (seconds per million faces; it would freeze a serving
  process, so the store never does it while serving).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from facepipe.core.settings import load_settings
from facepipe.store.vectors.edge_engine import optimize_store
from facepipe.store.vectors.lock import StoreInUseError
from facepipe.store.vectors.migrate import MigrationError, migrate_local_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m facepipe.store.vectors", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("action", choices=("migrate", "optimize"))
    parser.add_argument("--path", type=Path, help="the store folder (default QDRANT_PATH)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = args.path or load_settings().qdrant_path
    if not path.is_dir():
        print(f"no vector store at {path}", file=sys.stderr)
        return 1
    try:
        if args.action == "migrate":
            report = migrate_local_store(path)
            print(f"{path}: nothing to migrate" if report is None else f"{path}: migrated {report.points}")
        else:
            changed = optimize_store(path)
            states = [
                f"{name} {'optimized' if done else 'already optimal'}" for name, done in changed.items()
            ]
            print(f"{path}: {', '.join(states) or 'no collections'}")
    except (StoreInUseError, MigrationError) as exc:
        print(str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
