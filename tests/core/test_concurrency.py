"""map_concurrently: order kept, at most `limit` calls at once, exceptions raised or returned."""

from __future__ import annotations

import threading

import pytest

from facepipe.core.worker import map_concurrently


def test_results_in_order_and_limit_respected_and_reached() -> None:
    limit = 3
    barrier = threading.Barrier(limit, timeout=30)  # breaks unless `limit` calls really overlap
    lock = threading.Lock()
    running = peak = 0

    def work(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        barrier.wait()
        with lock:
            running -= 1
        return n * n

    assert map_concurrently(work, range(9), limit) == [n * n for n in range(9)]
    assert peak == limit


def test_exceptions_raised_or_returned_in_their_slot() -> None:
    def work(n: int) -> int:
        if n == 2:
            raise ValueError("two")
        return n

    with pytest.raises(ValueError, match="two"):
        map_concurrently(work, range(4), 2)
    results = map_concurrently(work, range(4), 2, return_exceptions=True)
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], ValueError)
    assert map_concurrently(work, [0, 2], 1, return_exceptions=True)[0] == 0
    assert map_concurrently(work, [], 4) == []
    with pytest.raises(ValueError):
        map_concurrently(work, [1], 0)
