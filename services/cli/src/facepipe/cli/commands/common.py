"""What several commands share: the ``--api`` option and the ops-api client it selects."""

from __future__ import annotations

import argparse

from facepipe.cli.connect import OpsApiClient, default_api

# argparse's type for what add_subparsers() returns.
Subparsers = argparse._SubParsersAction


def add_api_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default=None, help=f"ops-api URL (default $FACEPIPE_API or {default_api()})")


def ops_api(args: argparse.Namespace) -> OpsApiClient:
    return OpsApiClient(args.api)
