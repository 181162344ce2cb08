"""Is the installed FacePipeline CRD the one this operator was built for?

Helm installs a chart's crds/ on the first install only and never upgrades them, so after
`helm upgrade` of the operator chart the cluster may serve an older schema: the API server
then prunes the fields it does not know (a new spec field silently vanishes) and applies
old defaults. The CRD carries the hash of its schema (annotation facepipe.io/schema-hash,
kept equal to CRD_SCHEMA_HASH by a test); the operator compares it and, on a mismatch,
marks every FacePipeline Degraded (reason CRDOutdated) with the command that fixes it.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from typing import Any

from facepipe.operator.constants import ANNOTATION_SCHEMA_HASH, CRD_NAME, CRD_SCHEMA_HASH
from facepipe.operator.kube import CRD, KubeApi, KubeApiError


def schema_hash(crd: Mapping[str, Any]) -> str:
    """16 hex digits of sha256 over the stored version's openAPIV3Schema (canonical JSON)."""
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    canonical = json.dumps(version["schema"]["openAPIV3Schema"], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def crd_problem(crd: Mapping[str, Any] | None) -> str | None:
    if crd is None:
        return None  # not readable (RBAC) or not there: nothing to compare
    installed = ((crd.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_SCHEMA_HASH)
    if installed == CRD_SCHEMA_HASH:
        return None
    return (
        f"the installed CRD {CRD_NAME} (schema {installed or 'unknown'}) is not the one this operator "
        f"expects ({CRD_SCHEMA_HASH}): `helm upgrade` never updates CRDs; apply the operator chart's own, "
        "e.g. `helm show crds <chart> | kubectl apply --server-side -f -`. Until then the API server "
        "drops spec fields it does not know."
    )


class CrdCheck:
    """:func:`crd_problem` of the live CRD, read at most once per ``ttl_s``."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._problem: str | None = None

    def problem(self, api: KubeApi) -> str | None:
        with self._lock:
            if time.monotonic() - self._checked_at < self._ttl_s:
                return self._problem
            try:
                self._problem = crd_problem(api.get(CRD, None, CRD_NAME))
            except KubeApiError as exc:
                if exc.status not in (401, 403):
                    raise
                self._problem = None
            self._checked_at = time.monotonic()
            return self._problem
