"""``map_concurrently``: a handler's per-message work, at most MAX_WORKER_CONCURRENCY at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar, overload

T = TypeVar("T")
R = TypeVar("R")


@overload
def map_concurrently(
    fn: Callable[[T], R], items: Iterable[T], limit: int, *, return_exceptions: Literal[False] = False
) -> list[R]: ...


@overload
def map_concurrently(
    fn: Callable[[T], R], items: Iterable[T], limit: int, *, return_exceptions: Literal[True]
) -> list[R | Exception]: ...


def map_concurrently(
    fn: Callable[[T], R], items: Iterable[T], limit: int, *, return_exceptions: bool = False
) -> list[Any]:
    """``[fn(item) for item in items]`` with at most ``limit`` calls at a time, results in order.

    Threads, because the work is I/O (S3, Qdrant) or releases the GIL (onnxruntime).
    ``return_exceptions=True`` puts each item's exception in its slot (what a handler
    returns per message); otherwise the first exception is raised after all calls end.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    work = list(items)
    if limit == 1 or len(work) <= 1:
        outcomes: list[tuple[bool, Any]] = []
        for item in work:
            try:
                outcomes.append((True, fn(item)))
            except Exception as exc:
                outcomes.append((False, exc))
    else:
        with ThreadPoolExecutor(max_workers=min(limit, len(work)), thread_name_prefix="facepipe-map") as pool:
            futures = [pool.submit(fn, item) for item in work]
        outcomes = [(future.exception() is None, future.exception() or future.result()) for future in futures]
    if not return_exceptions:
        for ok, value in outcomes:
            if not ok:
                raise value
    return [value for _ok, value in outcomes]
