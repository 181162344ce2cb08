"""Scenario 3: SIGTERM mid-batch for each service.

The batch in hand is finished and acked, the process exits 0, and nothing is redelivered.
"""

from __future__ import annotations

import re
import time

import pytest
import redis
from reliability_images import GeneratedImage
from reliabilitykit import Service, Stack, record, scaled, tally

pytestmark = pytest.mark.reliability

KINDS = ("detector", "embedder", "indexer")


def _pending_of(stack: Stack, stream: str, consumer: str) -> int:
    try:
        rows = stack.redis().xinfo_consumers(stream, stack.settings.redis_group_name)
    except redis.ResponseError:  # no consumer group yet
        return 0
    for row in rows:
        if row["name"] == consumer:
            return int(row["pending"])
    return 0


def _sigterm_mid_batch(stack: Stack, service: Service, stream: str, timeout: float = 300) -> tuple[int, int]:
    """SIGTERM ``service`` while it holds a batch (2+ entries); (exit code, entries it held then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = _pending_of(stack, stream, service.consumer)
        if held >= 2:
            return service.terminate(), held
        time.sleep(0.01)
    raise TimeoutError(f"{service.kind} never held a batch\n{stack.log_tails()}")


def _wait_backlog(stack: Stack, stream: str, entries: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while stack.added(stream) < entries:
        assert time.monotonic() < deadline, f"{stream} never reached {entries} entries\n{stack.log_tails()}"
        time.sleep(0.2)


@pytest.mark.timeout(1200)
def test_sigterm_mid_batch_finishes_acks_and_exits_zero(
    stack: Stack, image_set: list[GeneratedImage]
) -> None:
    images = image_set[: scaled(120, 40)]
    # A leftover entry would be reclaimed (and counted) quickly; batches of 8 from a backlog.
    stack.overrides.update({"CLAIM_IDLE_MS": "3000", "WORKER_BATCH_SIZE": "8"})
    streams = dict(zip(KINDS, stack.settings.pipeline_streams, strict=True))
    stack.publish(images)
    results: dict[str, tuple[int, int, int]] = {}
    for kind in KINDS:
        # Each stage starts on a backlog, so its first read is a full batch; SIGTERM lands while it works.
        _wait_backlog(stack, streams[kind], min(len(images), 16))
        victim = stack.spawn(kind, wait=False)
        code, held = _sigterm_mid_batch(stack, victim, streams[kind])
        left = _pending_of(stack, streams[kind], victim.consumer)
        results[kind] = (code, held, left)
        assert "Worker stopped" in victim.log(), victim.log()[-2000:]
        stack.spawn(kind)  # the replacement finishes the rest
    stack.wait_drained(timeout=900, expected_ingest=len(images))
    time.sleep(4)  # longer than CLAIM_IDLE_MS: a leftover entry would have been reclaimed by now

    ingest, detected, embedded = (stack.added(s) for s in stack.settings.pipeline_streams)
    reclaimed = sum(int(n) for s in stack.services for n in re.findall(r"Reclaimed (\d+) message", s.log()))
    result, problems = tally(stack, images)
    ok = (
        all(code == 0 and left == 0 for code, _held, left in results.values())
        and reclaimed == 0
        and detected == ingest == embedded == len(images)
        and not problems
        and result.dlq == 0
    )
    record(
        "3. SIGTERM mid-batch (each service)",
        ok,
        messages=len(images),
        **result.columns(),
        notes="; ".join(
            f"{kind}: exit {code}, held {held}, left pending {left}"
            for kind, (code, held, left) in results.items()
        )
        + f"; {reclaimed} redeliveries",
    )
    for kind, (code, held, left) in results.items():
        assert code == 0, f"{kind} exited {code}"
        assert held >= 2, f"{kind} held {held}"
        assert left == 0, f"{kind} left {left} entries of its batch unacked"
    assert reclaimed == 0, "an entry was redelivered after a graceful stop"
    assert detected == ingest == embedded == len(images), "one output per input: nothing processed twice"
    assert not problems, problems
    assert result.dlq == 0 and result.indexed == result.expected
