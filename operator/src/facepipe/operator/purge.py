"""The seam between the operator and the tenant-data purge of facepipe.store.

``deletionPolicy: Purge`` deletes a tenant's vectors, objects and dedup keys before
the FacePipeline goes away. The purge itself lives in
``facepipe.store.deletion.purge_tenant``; the operator only resolves the tenant's
settings and calls it through :data:`Purger`, which tests may replace.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from facepipe.core.settings import Settings

Purger = Callable[[Settings, str], Any]


class PurgeUnavailable(RuntimeError):
    """facepipe.store.deletion.purge_tenant cannot be imported."""


def default_purger() -> Purger:
    try:
        module = importlib.import_module("facepipe.store.deletion")
        return module.purge_tenant  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise PurgeUnavailable(f"facepipe.store.deletion.purge_tenant is not available: {exc}") from None


def settings_from_env(env: dict[str, str]) -> Settings:
    """Settings from exactly ``env`` (never from the operator's own environment)."""
    return Settings.model_validate(env)
