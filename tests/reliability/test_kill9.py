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
TICK_S = 0.5


@pytest.mark.timeout(2400)
def test_kill9_at_random_moments_loses_and_doubles_nothing(
    stack: Stack, image_set: list[GeneratedImage]
) -> None:
    rng = random.Random(8)
    images = list(image_set)
    stack.spawn_pipeline()
    target_kills = scaled(24, 6)
    # Images are produced while the kills happen (as a crawler would), so every kill lands while
    # work is in flight: spread over ~1.2x the kill window (a kill every 0.5-2.5 s).
    ticks = max(1, round(target_kills * 1.5 * 1.2 / TICK_S))
    chunk = max(1, -(-len(images) // ticks))
    kills: Counter[str] = Counter()
    kills_in_flight = 0
    unpublished = list(images)
    ingest_ids: list[str] = []
    next_kill = time.monotonic() + rng.uniform(0.5, 2.5)
    started = time.monotonic()
    deadline = started + 900
    while unpublished or sum(kills.values()) < target_kills:
        assert time.monotonic() < deadline, stack.log_tails()
        if unpublished:
            ingest_ids += stack.publish(unpublished[:chunk])
            del unpublished[:chunk]
        done = sum(kills.values())
        if done < target_kills and time.monotonic() >= next_kill:
            depths = stack.depths()
            kills_in_flight += int(bool(unpublished) or any(d["lag"] + d["pending"] for d in depths.values()))
            kind = KINDS[done] if done < len(KINDS) else rng.choice(KINDS)  # each kind at least once
            for victim in stack.live(kind):
                victim.kill9()
            kills[kind] += 1
            stack.spawn(kind, wait=False)  # the replacement loads its models while the others go on
            next_kill = time.monotonic() + rng.uniform(0.5, 2.5)
        time.sleep(TICK_S)
    stack.wait_drained(timeout=900, expected_ingest=len(ingest_ids))
    elapsed = time.monotonic() - started

    result, problems = tally(stack, images)
    reclaimed = sum(int(n) for s in stack.services for n in re.findall(r"Reclaimed (\d+) message", s.log()))
    stats = stack.stats()
    per_kind = ", ".join(f"{kind} {n}" for kind, n in sorted(kills.items()))
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
        **result.columns(),
        notes=f"{sum(kills.values())} kills, {kills_in_flight} with work in flight ({per_kind}), "
        f"{reclaimed} redeliveries, {sum(stack.spawned.values())} processes, {elapsed:.0f} s",
    )
    assert not problems, problems
    assert result.dlq == 0, stack.dlq()
    assert result.indexed == result.expected and result.expected > 0
    assert result.crops == result.expected, "every indexed face has exactly one crop in S3"
    assert result.duplicates == 0 and result.leaks == 0
    assert sum(kills.values()) >= target_kills and all(kills[k] > 0 for k in KINDS)
    assert kills_in_flight == sum(kills.values()), "every kill must land while images flow"
    assert stats.get("worker_msgs_acked") == len(images), stats
    assert stats.get("faces_processed", 0) >= result.expected
