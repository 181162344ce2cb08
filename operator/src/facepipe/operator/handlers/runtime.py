"""Process-wide state of the operator: the API client and the purge seam."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import kopf

from facepipe.operator.apply import ApplyMode, parse_apply_mode
from facepipe.operator.constants import FINALIZER, GROUP
from facepipe.operator.crd_check import CrdCheck
from facepipe.operator.kube import KubeApi
from facepipe.operator.purge import Purger, default_purger

# How often every FacePipeline is reconciled in full and its stream figures are read.
RESYNC_SECONDS = float(os.environ.get("FACEPIPE_OPERATOR_RESYNC_SECONDS", "30"))
# How long a failed purge waits before the next try (the finalizer holds the object meanwhile).
PURGE_RETRY_SECONDS = float(os.environ.get("FACEPIPE_OPERATOR_PURGE_RETRY_SECONDS", "30"))
# How often a Purge looks again whether the tenant's pods are gone.
PURGE_POLL_SECONDS = float(os.environ.get("FACEPIPE_OPERATOR_PURGE_POLL_SECONDS", "5"))


@dataclass
class Runtime:
    api: KubeApi | None = None
    purger: Purger | None = None  # None: facepipe.store.deletion.purge_tenant
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    locks_guard: threading.Lock = field(default_factory=threading.Lock)
    # FacePipelines this operator serves (uid → namespace, name), for the periodic resync.
    pipelines: dict[str, tuple[str, str]] = field(default_factory=dict)
    # The operator's --namespace options (empty: every namespace), for listing FacePipelines
    # where a cluster-wide list is not allowed.
    watch_namespaces: tuple[str, ...] = ()
    resync_thread: threading.Thread | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    crd_check: CrdCheck = field(default_factory=lambda: CrdCheck(RESYNC_SECONDS))
    # How children are written (facepipe.operator.apply): server-side apply, or merge patches
    # for an API server without it (the development emulator); $FACEPIPE_OPERATOR_APPLY.
    apply_mode: ApplyMode = "server-side"

    def require_api(self) -> KubeApi:
        if self.api is None:
            raise kopf.TemporaryError("the operator is not started yet", delay=1)
        return self.api

    def lock_for(self, uid: str) -> threading.Lock:
        """One reconcile at a time per FacePipeline (spec handlers, timers and child events race)."""
        with self.locks_guard:
            return self.locks.setdefault(uid, threading.Lock())

    def track(self, uid: str, namespace: str, name: str) -> None:
        with self.locks_guard:
            self.pipelines[uid] = (namespace, name)

    def tracked(self) -> list[tuple[str, str, str]]:
        with self.locks_guard:
            return [(uid, namespace, name) for uid, (namespace, name) in self.pipelines.items()]

    def visible_namespaces(self, current: str) -> set[str]:
        """Namespaces to list FacePipelines in when a cluster-wide list is forbidden."""
        plain = {ns for ns in self.watch_namespaces if not any(c in ns for c in "*?[!")}
        with self.locks_guard:
            return {current, *plain, *(namespace for namespace, _ in self.pipelines.values())}

    def forget(self, uid: str) -> None:
        with self.locks_guard:
            self.locks.pop(uid, None)
            self.pipelines.pop(uid, None)

    def get_purger(self) -> Purger:
        return self.purger or default_purger()


RUNTIME = Runtime()


def configure(settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # Kubernetes events only for problems
    settings.execution.max_workers = 8
    RUNTIME.apply_mode = parse_apply_mode(os.environ.get("FACEPIPE_OPERATOR_APPLY"))
    if RUNTIME.api is None:
        RUNTIME.api = KubeApi.from_environment(os.environ.get("FACEPIPE_OPERATOR_KUBECONFIG") or None)
    logger.info(
        "facepipe operator configured (resync every %.0f s, children applied %s)",
        RESYNC_SECONDS,
        "server-side" if RUNTIME.apply_mode == "server-side" else "by merge patches (no server-side apply)",
    )


def start_resync(resync_all: Callable[[], None], logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Re-run every tracked FacePipeline's reconcile every RESYNC_SECONDS, in a thread.

    Not a Kopf timer: Kopf gives every object with a timer a finalizer, and a
    Retain pipeline must stay deletable while the operator is down.
    """
    if RUNTIME.resync_thread is not None and RUNTIME.resync_thread.is_alive():
        return
    RUNTIME.stopping.clear()

    def loop() -> None:
        while not RUNTIME.stopping.wait(RESYNC_SECONDS):
            try:
                resync_all()
            except Exception:  # one bad pass must not end the resync
                logger.exception("resync pass failed")

    RUNTIME.resync_thread = threading.Thread(target=loop, name="facepipe-resync", daemon=True)
    RUNTIME.resync_thread.start()


def cleanup() -> None:
    RUNTIME.stopping.set()
    if RUNTIME.resync_thread is not None:
        RUNTIME.resync_thread.join(RESYNC_SECONDS + 30)
        RUNTIME.resync_thread = None
    if RUNTIME.api is not None:
        RUNTIME.api.close()
        RUNTIME.api = None
