"""Helpers shared by the operator tests (tests/operator/conftest.py puts this folder on sys.path)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "facepipelines.facepipe.io.yaml"
EXAMPLES = REPO_ROOT / "examples"

T = TypeVar("T")


def wait_for(probe: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, what: str = "") -> T:
    """Poll until ``probe`` returns something truthy; the machine is shared, so be patient."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}; last value: {last!r}")


def minimal_spec(redis_url: str, tenant: str = "acme") -> dict[str, Any]:
    return {
        "tenantId": tenant,
        "redis": {"url": redis_url},
        "storage": {"endpoint": "minio:9000"},
        "vectorDb": {"url": "http://qdrant:6333"},
    }


def facepipeline(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "facepipe.io/v1alpha1",
        "kind": "FacePipeline",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
