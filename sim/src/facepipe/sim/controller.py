"""The loop every simulated controller runs: one pass every ``period`` seconds until stopped.

A pass that fails is logged and the next one retries, as a controller in a cluster keeps
running through API errors. ``start(stop)`` can share one stop event among several
controllers (the cluster simulation stops them all at once).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class PeriodicController:
    thread_name = "sim-controller"

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync_once(self) -> object:
        raise NotImplementedError

    def start(self, stop: threading.Event | None = None) -> None:
        if stop is not None:
            self._stop = stop
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def _loop(self) -> None:
        while True:
            try:
                self.sync_once()
            except Exception:
                log.exception("%s: pass failed; retrying", self.thread_name)
            if self._stop.wait(self.period):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
