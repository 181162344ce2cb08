"""Reading the settings: one clear line per bad variable instead of a pydantic traceback."""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import AliasChoices, ValidationError

from facepipe.core.settings.model import Settings


class ConfigError(SystemExit):
    """Raised instead of a traceback: the message is the one line an operator needs."""


def _env_is_set(name: str) -> bool:
    return any(key.upper() == name.upper() for key in os.environ)


def _describe(error: dict) -> str:
    if not error["loc"]:  # a check of several settings together: its message names them
        return str(error["msg"]).removeprefix("Value error, ")
    loc = str(error["loc"][0])
    info = None
    env_name = loc.upper()
    for name, field_info in Settings.model_fields.items():
        choices = (
            field_info.validation_alias.choices
            if isinstance(field_info.validation_alias, AliasChoices)
            else []
        )
        if loc == name or loc in choices:
            # Name the variable that was actually set: pydantic reports the primary name
            # even when the value came through a legacy alias.
            names = [str(choice) for choice in choices] or [name.upper()]
            info = field_info
            env_name = next((n for n in names if _env_is_set(n)), names[0])
            break
    value = error.get("input")
    ctx = error.get("ctx") or {}
    kind = error["type"]
    if kind in {"greater_than_equal", "less_than_equal", "greater_than", "less_than"} and info is not None:
        low = high = None
        for meta in info.metadata:
            low = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else low
            low = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else low
            high = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else high
            high = getattr(meta, "lt", None) if getattr(meta, "lt", None) is not None else high
        allowed = f"allowed range {low}..{high}" if high is not None else f"must be at least {low}"
    elif kind == "literal_error":
        allowed = f"allowed values: {ctx.get('expected')}"
    else:
        allowed = error["msg"].removeprefix("Value error, ")
    return f"{env_name}={value!r} is invalid: {allowed}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment, or exit with one clear line per bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {lines}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once (Phase 3, docs/compatibility.md: all flags are cached at start-up)."""
    return load_settings()
