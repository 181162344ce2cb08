"""``python -m facepipe.embedder [--once] [--max-batch N]``: the embedder worker."""

from __future__ import annotations

import sys

from facepipe.core.worker import run_worker_cli
from facepipe.embedder.handler import EmbedderHandler


def main(argv: list[str] | None = None) -> int:
    return run_worker_cli(EmbedderHandler, argv, prog="python -m facepipe.embedder")


if __name__ == "__main__":
    sys.exit(main())
