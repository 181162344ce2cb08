"""The facepipe command's shape: every command module is wired into the parser, and starting the
CLI loads nothing heavy (`facepipe stats` must not pay for OpenCV, numpy or the storage clients)."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

from facepipe.cli import commands
from facepipe.cli.commands import dedup
from facepipe.cli.main import COMMANDS, build_parser

HEAVY = ("cv2", "numpy", "onnxruntime", "minio", "qdrant_client", "facepipe.vision", "facepipe.store")


def test_every_command_module_is_in_the_parser() -> None:
    modules = [
        importlib.import_module(f"{commands.__name__}.{m.name}")
        for m in pkgutil.iter_modules(commands.__path__)
    ]
    with_commands = {module.__name__ for module in modules if hasattr(module, "add_parser")}
    assert with_commands == {module.__name__ for module in COMMANDS}
    args = build_parser().parse_args(["dedup-stats", "--json"])
    assert args.func is dedup.stats and args.json


def test_starting_the_cli_loads_no_heavy_module() -> None:
    probe = f"import sys, facepipe.cli.main; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == ""
