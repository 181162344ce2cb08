"""Scenario 1: kill -9 of detector, embedder and indexer processes at random moments while images flow.

Restarted workers (new processes, new consumer names) reclaim what the dead ones left
pending and finish the job. Every expected face must be indexed exactly once: nothing
lost, no duplicate point, no face under a foreign tenant, nothing dead-lettered.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter

import pytest
from reliability_images import GeneratedImage
from reliabilitykit import Stack, record, scaled, tally

pytestmark = pytest.mark.reliability

KINDS = ("detector", "embedder", "indexer")


@pytest.mark.timeout(2400)
def test_kill9_at_random_moments_loses_and_doubles_nothing(
    stack: Stack, image_set: list[GeneratedImage]
) -> None:
    rng = random.Random(8)
    images = image_set
    stack.spawn_pipeline()
    ingest_ids = stack.publish(images)
    kills: Counter[str] = Counter()
    target_kills = scaled(24, 6)
    next_kill = time.monotonic() + rng.uniform(1.0, 4.0)

    def chaos() -> None:
        nonlocal next_kill
        if sum(kills.values()) >= target_kills or time.monotonic() < next_kill:
            return
        done = sum(kills.values())
        kind = KINDS[done] if done < len(KINDS) else rng.choice(KINDS)  # each kind at least once
        for victim in stack.live(kind):
            victim.kill9()
        kills[kind] += 1
        stack.spawn(kind, wait=False)  # the replacement loads its models while the others go on
        next_kill = time.monotonic() + rng.uniform(2.0, 7.0)

    started = time.monotonic()
    stack.wait_drained(
        timeout=900,
        expected_ingest=len(ingest_ids),
        while_waiting=lambda: chaos() if sum(kills.values()) < target_kills else None,
    )
    while sum(kills.values()) < target_kills:  # drained before every kill happened: kill the idle ones too
        next_kill = 0
        chaos()
        time.sleep(1)
    stack.wait_drained(timeout=600, expected_ingest=len(ingest_ids))
    elapsed = time.monotonic() - started

    result, problems = tally(stack, images)
    reclaimed = sum(int(n) for s in stack.services for n in re.findall(r"Reclaimed (\d+) message", s.log()))
    stats = stack.stats()
    ok = (
        result.lost == 0
        and result.duplicates == 0
        and result.leaks == 0
        and result.unexpected == 0
        and result.dlq == 0
        and result.indexed == result.expected
        and result.crops == result.expected
    )
    record(
        "1. kill -9 detector/embedder/indexer at random",
        ok,
        messages=result.messages,
        **{"faces expected": result.expected},
        indexed=result.indexed,
        duplicates=result.duplicates,
        lost=result.lost,
        leaks=result.leaks,
        DLQ=result.dlq,
        notes=f"{sum(kills.values())} kills ({', '.join(f'{k} {n}' for k, n in sorted(kills.items()))}), "
        f"{reclaimed} redeliveries, {len(stack.spawned) and sum(stack.spawned.values())} processes, "
        f"{elapsed:.0f} s",
    )
    assert not problems, problems
    assert result.dlq == 0, stack.dlq()
    assert result.indexed == result.expected and result.expected > 0
    assert result.crops == result.expected, "every indexed face has exactly one crop in S3"
    assert result.duplicates == 0 and result.leaks == 0
    assert sum(kills.values()) >= target_kills and all(kills[k] > 0 for k in KINDS)
    assert stats.get("worker_msgs_acked") == len(images), stats
    assert stats.get("faces_processed", 0) >= result.expected
