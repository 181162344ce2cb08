"""Exponential backoff with jitter that wakes up as soon as the worker is asked to stop."""

from __future__ import annotations

import random
import threading

_MAX_DOUBLINGS = 64  # 2**64 times any initial delay is past any max_s


class Backoff:
    """Delays of ``initial_s * 2**(attempt-1)``, capped at ``max_s``; waits end early on ``stop``."""

    def __init__(self, initial_s: float, max_s: float, stop: threading.Event) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.stop = stop

    def delay(self, attempt: int) -> float:
        # The exponent is capped: past about 1024 attempts (a long outage at a short max_s)
        # 2**attempt no longer converts to a float, and the OverflowError would end the wait.
        doubled = self.initial_s * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS)
        # Jitter, so replicas that failed together do not retry in lockstep.
        return min(self.max_s, doubled) * random.uniform(0.8, 1.0)

    def sleep(self, attempt: int) -> bool:
        """Wait the attempt's backoff; False when asked to stop meanwhile."""
        return not self.stop.wait(self.delay(attempt))
