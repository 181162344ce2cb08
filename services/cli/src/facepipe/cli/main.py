"""The facepipe command: local mode, ingest, search and the runbook's operations.

    facepipe up                                  # everything on this machine, ops-api on :8001
    facepipe ingest photos/ --tenant demo --wait # upload + publish + wait + summary
    facepipe search face.jpg --tenant demo       # who is this, among demo's faces?

Commands that need the pipeline's Redis/S3 find them through a running
``facepipe up`` (its ops-api's GET /local) or, failing that, the environment
(REDIS_URL, MINIO_ENDPOINT, ...). Commands that talk to the ops-api use
``--api`` (default $FACEPIPE_API or http://127.0.0.1:8001) and send
``Authorization: Bearer $OPS_API_TOKEN`` when that is set.

Each command lives in ``facepipe.cli.commands``; this module builds the parser from them,
runs the command chosen and turns its failure into one red line and an exit code.
"""

from __future__ import annotations

import argparse
import sys

import redis
from rich.text import Text

from facepipe.cli.commands import (
    dedup,
    delete,
    demo,
    dlq,
    ensure,
    ingest,
    publish_test,
    ready,
    search,
    stats,
    up,
    vectors,
    worker,
)
from facepipe.cli.connect import ApiCallError, ApiUnreachableError
from facepipe.cli.output import CliError, err_console
from facepipe.core.errors import PermanentError, TransientError
from facepipe.core.settings import ConfigError

# In the order `facepipe -h` lists them.
COMMANDS = (up, ingest, search, stats, ready, publish_test, ensure, dedup, vectors, dlq, delete, worker, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facepipe",
        description=__doc__.split("\n\n")[0],
        epilog="Run `facepipe COMMAND -h` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        return _fail(args.command, str(exc), exc.code)
    except (ApiUnreachableError, ApiCallError, ConfigError) as exc:
        return _fail(args.command, str(exc), 1)
    except PermanentError as exc:
        return _fail(args.command, exc.message, 2)
    except (TransientError, redis.ConnectionError, redis.TimeoutError) as exc:
        return _fail(
            args.command,
            f"cannot reach the pipeline: {exc}. Is `facepipe up` running (or REDIS_URL/MINIO_ENDPOINT set)?",
            1,
        )
    except KeyboardInterrupt:
        return 130


def _fail(command: str, message: str, code: int) -> int:
    err_console.print(Text(f"facepipe {command}: {message}", style="bold red"), soft_wrap=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
