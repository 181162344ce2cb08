"""One log format for every process: ``%(asctime)s %(levelname)s %(name)s - %(message)s``."""

from __future__ import annotations

import logging
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s - %(message)s"
# Libraries that log every HTTP request at INFO would drown the Phase 3 log lines (docs/compatibility.md).
_QUIET_LOGGERS = ("urllib3", "httpx", "httpcore")


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root logger once per process (calling it again replaces the handler)."""
    if isinstance(level, str):
        level = level.upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
