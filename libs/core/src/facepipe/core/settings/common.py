"""What every part of the settings shares: env names, stream roles, the models' default folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices
from pydantic_settings import BaseSettings, SettingsConfigDict


def env_names(primary: str, *aliases: str) -> AliasChoices:
    """The variable's Phase 3 primary name, then its legacy aliases: the first one set wins."""
    return AliasChoices(primary, *aliases)


# A stream's place in the pipeline: which stage reads it (detector, embedder, indexer).
StreamRole = Literal["ingest", "detected", "embedded"]
STREAM_ROLES: tuple[StreamRole, ...] = ("ingest", "detected", "embedded")


def default_models_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facepipe" / "models"


def dlq_stream(stream: str) -> str:
    return f"{stream}:dlq"


class SettingsBase(BaseSettings):
    """The environment reading every section shares."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)
