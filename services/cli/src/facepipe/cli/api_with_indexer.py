"""``python -m facepipe.cli.api_with_indexer [--host H] [--port P | --fd N]``: local mode's ops API + indexer.

The embedded vector store lets only ONE process open its folder, and both the
indexer (writes) and the ops-api (search, delete, readiness) need it; so in local
mode they share one process and one :class:`VectorIndex`. The indexer's worker
loop owns the main thread (and SIGTERM/SIGINT: finish the batch in hand, ack,
exit 0); uvicorn serves from a background thread, where it installs no signal
handlers, and is told to stop when the worker loop returns. With a Qdrant server
(QDRANT_URL set) the two run as separate processes and scale separately.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

import uvicorn

from facepipe.core.logs import setup_logging
from facepipe.core.settings import Settings, load_settings
from facepipe.core.worker import Worker
from facepipe.indexer.handler import IndexerHandler
from facepipe.ops_api.__main__ import inherited_socket, uvicorn_config
from facepipe.ops_api.app import create_app
from facepipe.ops_api.backend import OpsBackend
from facepipe.store.vectors import VectorIndex

log = logging.getLogger("facepipe.ops_api")


def serve_with_indexer(settings: Settings, host: str, port: int, fd: int | None = None) -> int:
    index = VectorIndex(settings)
    backend = OpsBackend(settings, index=index)
    server = uvicorn.Server(uvicorn_config(create_app(settings, backend), host, port))
    failed = threading.Event()

    def run_api() -> None:
        try:
            server.run(sockets=inherited_socket(fd))
        except SystemExit:  # uvicorn exits this way when it cannot bind the port
            failed.set()
        except Exception:
            log.exception("ops-api server crashed")
            failed.set()
        if failed.is_set() or not server.should_exit:
            # The API is gone while the worker still runs: stop the worker so a supervisor restarts us.
            failed.set()
            os.kill(os.getpid(), signal.SIGTERM)

    api_thread = threading.Thread(target=run_api, name="ops-api", daemon=True)
    api_thread.start()
    try:
        code = Worker(settings, IndexerHandler(settings, index=index)).run()
    finally:
        server.should_exit = True
        api_thread.join(timeout=10)
        index.close()
    if failed.is_set():
        log.error("ops-api stopped unexpectedly (port %d in use?); exiting", port)
        return 1
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m facepipe.cli.api_with_indexer", description=__doc__)
    parser.add_argument("--host", help="interface to listen on (default OPS_API_HOST)")
    parser.add_argument("--port", type=int, help="port (default OPS_API_PORT, 8001)")
    parser.add_argument(
        "--fd", type=int, help="serve this inherited listening socket (`facepipe up` binds it)"
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    setup_logging(settings.log_level)
    host = args.host or settings.ops_api_host
    return serve_with_indexer(settings, host, args.port or settings.ops_api_port, args.fd)


if __name__ == "__main__":
    sys.exit(main())
