"""``run_worker_cli``: every stage's ``python -m facepipe.<stage> [--once] [--max-batch N]``."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from facepipe.core import metrics
from facepipe.core.logs import setup_logging
from facepipe.core.settings import Settings, get_settings
from facepipe.core.worker.loop import DISABLED_LINE, Worker
from facepipe.core.worker.messages import StageHandler


def _batch_size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be in 1..1000, got {value}")
    return value


def run_worker_cli(
    handler_factory: Callable[[Settings], StageHandler],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
) -> int:
    """The ``__main__`` of every stage: ``[--once] [--max-batch N]``; returns the exit code.

    An invalid setting exits with one line naming the variable (no traceback);
    ``ENABLE_QUEUE_WORKER=false`` logs why and exits 0 without building the handler.
    """
    parser = argparse.ArgumentParser(prog=prog, description="Redis Streams worker of one face-pipeline stage")
    parser.add_argument(
        "--once", action="store_true", help="process one batch (or wait one empty block), then exit"
    )
    parser.add_argument(
        "--max-batch",
        type=_batch_size_arg,
        default=None,
        metavar="N",
        help="messages per batch (default: WORKER_BATCH_SIZE)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()  # raises ConfigError (a one-line SystemExit) on a bad variable
    setup_logging(settings.log_level)
    log = logging.getLogger("facepipe.worker")
    if not settings.enable_queue_worker:
        log.info(DISABLED_LINE)
        return 0
    try:
        metrics.start_metrics_server(settings.metrics_port, stall_seconds=settings.worker_stall_seconds)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    try:
        handler = handler_factory(settings)
    except Exception:
        log.exception("Cannot build the stage handler")
        return 1
    return Worker(settings, handler, max_batch=args.max_batch, once=args.once).run()
