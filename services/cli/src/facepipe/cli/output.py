"""How the facepipe command talks to its user: the consoles, JSON output, and the error a
command raises to end with one red line."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class CliError(RuntimeError):
    """A failure to report in one red line, exit code 1 (2 for usage errors)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))
