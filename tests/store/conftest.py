from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for vectorkit

from facepipe.core.settings import Settings, load_settings


@pytest.fixture
def settings(base_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of the session's SeaweedFS and a fresh Qdrant folder, unique bucket names per test."""
    for name, value in base_env.items():
        monkeypatch.setenv(name, value)
    return load_settings()
