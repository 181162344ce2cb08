"""``facepipe worker STAGE|all [--once] [--max-batch N]`` (``make worker``, ``make worker-once``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from rich.text import Text

from facepipe.cli.commands.common import Subparsers
from facepipe.cli.output import console, err_console

STAGES = ("detector", "embedder", "indexer")


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("worker", help="run a pipeline stage (or all three) against REDIS_URL etc.")
    p.add_argument("stage", choices=[*STAGES, "all"])
    p.add_argument("--once", action="store_true", help="one batch, then exit (all: each stage in turn)")
    p.add_argument("--max-batch", type=int, default=None, metavar="N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    passthrough = (["--once"] if args.once else []) + (
        ["--max-batch", str(args.max_batch)] if args.max_batch else []
    )
    if args.stage != "all":
        return _become(args.stage, passthrough)
    if args.once:
        return _each_stage_once(passthrough)
    return _supervise_all(passthrough)


def _stage_argv(stage: str, passthrough: list[str]) -> list[str]:
    return [sys.executable, "-m", f"facepipe.{stage}", *passthrough]


def _become(stage: str, passthrough: list[str]) -> int:
    """Become the worker (exec): signals reach it directly, its exit code is ours."""
    os.execv(sys.executable, _stage_argv(stage, passthrough))


def _each_stage_once(passthrough: list[str]) -> int:
    """One batch per stage, in pipeline order: a message published before this runs goes all the way."""
    for stage in STAGES:
        code = subprocess.call(_stage_argv(stage, passthrough))
        if code != 0:
            err_console.print(f"[red]{stage} --once exited with code {code}[/]")
            return code
    return 0


def _supervise_all(passthrough: list[str]) -> int:
    from facepipe.cli.supervisor import ChildSpec, Supervisor
    from facepipe.cli.up import default_data_dir

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    specs = [ChildSpec(stage, _stage_argv(stage, passthrough), env) for stage in STAGES]

    def line(name: str, text: str) -> None:
        console.print(Text(f"{name:>9} | ", style="cyan") + Text(text), soft_wrap=True)

    def event(text: str) -> None:
        console.print(Text(" facepipe | ", style="bold blue") + Text(text))

    return Supervisor(specs, default_data_dir() / "logs", on_event=event, on_line=line).run()
