"""``python -m facepipe.indexer [--once] [--max-batch N]``: the indexer worker."""

from __future__ import annotations

import sys

from facepipe.core.worker import run_worker_cli
from facepipe.indexer.handler import IndexerHandler


def main(argv: list[str] | None = None) -> int:
    return run_worker_cli(IndexerHandler, argv, prog="python -m facepipe.indexer")


if __name__ == "__main__":
    sys.exit(main())
