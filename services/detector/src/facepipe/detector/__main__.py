"""``python -m facepipe.detector [--once] [--max-batch N]``: the detector worker."""

from __future__ import annotations

import sys

from facepipe.core.worker import run_worker_cli
from facepipe.detector.handler import DetectorHandler


def main(argv: list[str] | None = None) -> int:
    return run_worker_cli(DetectorHandler, argv, prog="python -m facepipe.detector")


if __name__ == "__main__":
    sys.exit(main())
