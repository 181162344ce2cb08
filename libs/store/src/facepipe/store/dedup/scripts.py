"""The Lua scripts (lua/*.lua, shipped inside the package), each behind the shared lua/records.lua.

Read when this module is imported, so an install without them fails at start-up (and in the
image checks, which import every module), not at the first duplicate check.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

import redis
from redis.commands.core import Script

SHARED = "records"


def lua_source(name: str) -> str:
    """The source of script ``name``: lua/records.lua (the shared functions), then lua/<name>.lua."""
    folder = files(__package__).joinpath("lua")
    return "\n".join(folder.joinpath(f"{part}.lua").read_text(encoding="utf-8") for part in (SHARED, name))


SOURCES = {name: lua_source(name) for name in ("check_and_remember", "commit", "confirm", "forget")}


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client (EVALSHA, loaded into Redis on first use)."""

    check_and_remember: Script  # the whole decision inside Redis (the fallback and read-only path)
    commit: Script  # the optimistic path's commit
    confirm: Script  # claims of indexed faces become confirmed entries
    forget: Script  # forgetting hashes (deletion), and releasing claims

    @classmethod
    def register(cls, client: redis.Redis) -> Scripts:
        return cls(**{name: client.register_script(source) for name, source in SOURCES.items()})
