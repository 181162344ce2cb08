"""The worker's retry backoff: doubling from the initial delay up to the maximum, for ever."""

from __future__ import annotations

import threading

from facepipe.core.worker.backoff import Backoff


def test_delays_double_up_to_the_maximum_with_jitter() -> None:
    backoff = Backoff(0.2, 2.0, threading.Event())
    for attempt, full in [(0, 0.2), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 2.0), (50, 2.0)]:
        assert 0.8 * full <= backoff.delay(attempt) <= full


def test_an_outage_of_any_length_keeps_the_maximum_delay() -> None:
    """Attempts past ~1024 (a night-long outage at a 2 s maximum) made 2**attempt overflow a
    float: the OverflowError ended the worker's wait, and with it the worker."""
    backoff = Backoff(0.2, 2.0, threading.Event())
    for attempt in (1025, 10_000, 10**9):
        assert 1.6 <= backoff.delay(attempt) <= 2.0
