"""Scenario 2: Redis, the S3 server and the vector store each stopped for ~10 s mid-run.

The workers must survive (same processes from start to end), retry with backoff, and
dead-letter nothing for being transient; /ready on the ops-api must name the failing
check while the server is down and be ready again after; nothing may be lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from reliability_images import GeneratedImage
from reliabilitykit import Stack, record, scaled, tally

pytestmark = pytest.mark.reliability

OUTAGE_S = 10.0


def _wait_progress(stack: Stack, stream: str, beyond: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while stack.added(stream) <= beyond:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no progress on {stream}: {stack.depths()}\n{stack.log_tails()}")
        time.sleep(0.3)


def _outage(stack: Stack, stop: Callable[[], None], start: Callable[[], None]) -> tuple[set[str], bool]:
    """Stop a server for OUTAGE_S, probing /ready meanwhile; (checks reported unhealthy, ready again)."""
    failing: set[str] = set()
    stop()
    down_until = time.monotonic() + OUTAGE_S
    while time.monotonic() < down_until:
        status, body = stack.ready()
        if status == 503:
            failing |= {name for name, state in body["checks"].items() if state != "healthy"}
        time.sleep(1.0)
    start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status, _body = stack.ready()
        if status == 200:
            return failing, True
        time.sleep(1.0)
    return failing, False


@pytest.mark.timeout(1500)
def test_outages_of_redis_s3_and_vector_store_lose_nothing(
    stack: Stack, image_set: list[GeneratedImage]
) -> None:
    images = image_set[: scaled(240, 40)]
    workers = stack.spawn_pipeline()
    stack.spawn_ops_api()
    deadline = time.monotonic() + 180
    while stack.ready()[0] != 200:  # the ops-api loads its models in the background
        assert time.monotonic() < deadline, stack.ready()
        time.sleep(1)
    settings = stack.settings
    assert stack.redis_server is not None and stack.s3_server is not None
    plan: list[tuple[str, Callable[[], None], Callable[[], None], set[str]]] = [
        ("Redis", stack.redis_server.stop, stack.start_redis, {"queue", "dedup_cache"}),
        ("S3", lambda: stack.s3_server.stop(), stack.start_s3, {"storage"}),  # type: ignore[union-attr]
        ("vector store", stack.stop_qdrant, stack.start_qdrant, {"vector_db"}),
    ]
    observed: dict[str, tuple[set[str], bool]] = {}
    # A portion of the images per outage, published just before it: every outage lands while
    # work is in flight. With all of them published at first, a fast pipeline finished them
    # before the last outage and the wait for progress before it could never end.
    portions = [images[i :: len(plan)] for i in range(len(plan))]
    for (name, stop, start, _expected), portion in zip(plan, portions, strict=True):
        before = stack.added(settings.embedded_stream)
        stack.publish(portion)
        _wait_progress(stack, settings.embedded_stream, before + 2)  # 3 of it through, the rest on its way
        observed[name] = _outage(stack, stop, start)
    stack.wait_drained(timeout=900, expected_ingest=len(images))

    survived = all(service.alive() for service in workers.values())
    restarts = sum(stack.spawned.values()) - 4
    transient_logged = sum(
        service.log().count("retrying") + service.log().count("Redis unavailable")
        for service in workers.values()
    )
    result, problems = tally(stack, images)
    ready_ok = all(expected <= observed[name][0] and observed[name][1] for name, _s, _t, expected in plan)
    ok = survived and restarts == 0 and ready_ok and not problems and result.dlq == 0
    record(
        "2. outages: Redis, S3, vector store ~10 s each",
        ok,
        messages=len(images),
        **result.columns(),
        notes="; ".join(
            f"{name} down: /ready 503 with {', '.join(sorted(failing)) or 'nothing'} unhealthy"
            f"{'' if back else ', NOT ready after'}"
            for name, (failing, back) in observed.items()
        )
        + f"; workers restarted: {restarts}; {transient_logged} retry/outage log lines",
    )
    assert survived, f"a worker died\n{stack.log_tails()}"
    for name, _stop, _start, expected in plan:
        failing, back = observed[name]
        assert expected <= failing, f"{name} down: /ready reported {failing}, expected {expected}"
        assert back, f"/ready not healthy again after the {name} outage"
    assert result.dlq == 0, stack.dlq()
    assert not problems, problems
    assert result.indexed == result.expected > 0
    assert transient_logged > 0, "the outages must have been noticed and retried"
