"""``python -m facepipe.ops_api [--host H] [--port P | --fd N]``: serve the ops API.

``--fd N`` serves a listening socket inherited from the parent, which bound it (local mode and
the tests do, so no other server can take the port between its choice and the bind).

Local mode runs the ops API and the indexer in one process (``facepipe.cli.api_with_indexer``),
because the embedded vector store can be opened by one process only.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys

import uvicorn

from facepipe.core.logs import setup_logging
from facepipe.core.settings import Settings, load_settings
from facepipe.ops_api.app import create_app

log = logging.getLogger("facepipe.ops_api")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m facepipe.ops_api", description="Serve the ops API.")
    parser.add_argument("--host", help="interface to listen on (default OPS_API_HOST)")
    parser.add_argument("--port", type=int, help="port (default OPS_API_PORT, 8001)")
    parser.add_argument("--fd", type=int, help="serve this inherited listening socket instead")
    return parser.parse_args(argv)


def inherited_socket(fd: int | None) -> list[socket.socket] | None:
    """uvicorn's ``sockets`` for ``--fd``: the inherited listening socket (None: bind host:port)."""
    return None if fd is None else [socket.socket(fileno=fd)]


def uvicorn_config(app: object, host: str, port: int) -> uvicorn.Config:
    # log_config=None: keep our logging format (facepipe.core.logs) for uvicorn's lines too.
    return uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5
    )


def serve(settings: Settings, host: str, port: int, fd: int | None = None) -> int:
    uvicorn.Server(uvicorn_config(create_app(settings), host, port)).run(sockets=inherited_socket(fd))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    settings = load_settings()
    setup_logging(settings.log_level)
    host = args.host or settings.ops_api_host
    port = args.port or settings.ops_api_port
    return serve(settings, host, port, args.fd)


if __name__ == "__main__":
    sys.exit(main())
