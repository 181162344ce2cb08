"""Scenario 3: SIGTERM mid-batch for each service: the batch in hand is finished and acked, exit 0, no redelivery."""

from __future__ import annotations

import re
import time

import pytest
from reliability_images import GeneratedImage
from reliabilitykit import Service, Stack, record, scaled, tally

pytestmark = pytest.mark.reliability

KINDS = ("detector", "embedder", "indexer")


def _pending_of(stack: Stack, stream: str, consumer: str) -> int:
    for row in stack.redis().xinfo_consumers(stream, stack.settings.redis_group_name):
        if row["name"] == consumer:
            return int(row["pending"])
    return 0


def _sigterm_mid_batch(stack: Stack, service: Service, stream: str, timeout: float = 300) -> tuple[int, int]:
    """SIGTERM ``service`` while it holds a batch; (exit code, entries it held at that moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = _pending_of(stack, stream, service.consumer)
        if held:
            return service.terminate(), held
        time.sleep(0.02)
    raise TimeoutError(f"{service.kind} never held a batch\n{stack.log_tails()}")


@pytest.mark.timeout(1200)
def test_sigterm_mid_batch_finishes_acks_and_exits_zero(
    stack: Stack, image_set: list[GeneratedImage]
) -> None:
    images = image_set[: scaled(120, 40)]
    stack.overrides["CLAIM_IDLE_MS"] = "5000"  # a leftover entry would be reclaimed (and counted) quickly
    services = stack.spawn_pipeline()
    streams = dict(zip(KINDS, stack.settings.pipeline_streams, strict=True))
    stack.publish(images)
    results: dict[str, tuple[int, int, int]] = {}
    for kind in KINDS:
        code, held = _sigterm_mid_batch(stack, services[kind], streams[kind])
        left = _pending_of(stack, streams[kind], services[kind].consumer)
        results[kind] = (code, held, left)
        stack.spawn(kind)  # the replacement finishes the rest
    stack.wait_drained(timeout=900, expected_ingest=len(images))
    time.sleep(6)  # longer than CLAIM_IDLE_MS: a leftover entry would have been reclaimed by now

    client = stack.redis()
    ingest, detected, embedded = (client.xlen(s) for s in stack.settings.pipeline_streams)
    reclaimed = sum(int(n) for s in stack.services for n in re.findall(r"Reclaimed (\d+) message", s.log()))
    finished_lines = {kind: "Worker stopped" in services[kind].log() for kind in KINDS}
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
        **{"faces expected": result.expected},
        indexed=result.indexed,
        duplicates=result.duplicates,
        lost=result.lost,
        leaks=result.leaks,
        DLQ=result.dlq,
        notes="; ".join(
            f"{kind}: exit {code}, held {held}, left pending {left}"
            for kind, (code, held, left) in results.items()
        )
        + f"; {reclaimed} redeliveries",
    )
    assert all(finished_lines.values()), finished_lines
    for kind, (code, held, left) in results.items():
        assert code == 0, f"{kind} exited {code}"
        assert held > 0
        assert left == 0, f"{kind} left {left} entries of its batch unacked"
    assert reclaimed == 0, "an entry was redelivered after a graceful stop"
    assert detected == ingest == embedded == len(images), "one output per input: nothing processed twice"
    assert not problems, problems
    assert result.dlq == 0 and result.indexed == result.expected
