"""Scenario 6: a poison pill (an image that crashes processing every time).

It must end in the DLQ (``max_deliveries_exceeded``) after MAX_DELIVERIES deliveries, and
the images behind it must not wait for it nor be dead-lettered with it: every one is
detected before the pill is given up on, and indexed. The crash is planted by
``poison_detector.py`` (see there why), as an exception and as a SIGSEGV that takes the whole
detector process down each time.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import pytest
from poison_detector import POISON_MARKER
from reliability_images import GeneratedImage
from reliabilitykit import Stack, record, scaled, tally

pytestmark = pytest.mark.reliability

HERE = Path(__file__).resolve().parent
MAX_DELIVERIES = 3


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-")[0])


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", ["raise", "segfault"])
def test_poison_pill_is_dead_lettered_without_blocking_the_stream(
    stack: Stack, image_set: list[GeneratedImage], mode: str
) -> None:
    stack.overrides.update(
        {
            # Shorter than any restart of a detector (it loads its models): the pill is always idle
            # again when the next one starts, the condition under which a loaded machine made the
            # pill hold the stream back (starvation). One consumer per stage at a time, so nothing
            # in flight is ever reclaimed from under a live one.
            "CLAIM_IDLE_MS": "300",
            "MAX_DELIVERIES": str(MAX_DELIVERIES),
            "WORKER_BATCH_SIZE": "8",
            "STREAM_RETENTION_MS": "3600000",  # keep the detected entries: when each came out
        }
    )
    good = [img for img in image_set if img.faces][: scaled(40, 16)]
    data = POISON_MARKER + hashlib.sha256(mode.encode()).digest() * 8
    pill = GeneratedImage(f"poison-pill:{mode}", data, "image/jpeg", tenant=good[0].tenant)
    half = len(good) // 2
    spawn_detector = lambda wait=True: stack.spawn(  # noqa: E731
        "detector", script=HERE / "poison_detector.py", wait=wait, POISON_MODE=mode
    )
    spawn_detector()
    stack.spawn("embedder")
    stack.spawn("indexer")
    ids = stack.publish([*good[:half], pill, *good[half:]])
    pill_id = ids[half]

    def supervise() -> None:  # what Kubernetes does for a crashed container: start it again
        if not stack.live("detector"):
            spawn_detector(wait=False)

    stack.wait_drained(timeout=900, expected_ingest=len(ids), while_waiting=supervise)

    settings = stack.settings
    dlq = stack.dlq()
    ingest_dlq = dlq[settings.ingest_stream]
    client = stack.redis()
    detected_at = {}
    for entry_id, fields in client.xrange(settings.detected_stream):
        detected_at[json.loads(fields["message"])["ingest"]["image_sha256"]] = _entry_ms(entry_id)
    pill_entry = ingest_dlq[0] if len(ingest_dlq) == 1 else {}
    failed_ms = int(datetime.fromisoformat(pill_entry["failed_at"]).timestamp() * 1000) if pill_entry else 0
    behind = good[half:]
    passed = sum(1 for img in behind if detected_at.get(img.sha256, 1 << 62) < failed_ms)
    result, problems = tally(stack, good)
    restarts = stack.spawned["detector"] - 1
    ok = (
        len(ingest_dlq) == 1
        and pill_entry.get("source_id") == pill_id
        and pill_entry.get("reason") == "max_deliveries_exceeded"
        and not problems
        and result.indexed == result.expected
        and passed == len(behind)
    )
    record(
        f"6. poison pill ({'exception' if mode == 'raise' else 'SIGSEGV'})",
        ok,
        messages=len(ids),
        **result.columns(),
        notes=f"pill DLQ'd after {pill_entry.get('delivery_count')} deliveries "
        f"({pill_entry.get('reason')}); {passed}/{len(behind)} images behind it detected before that; "
        f"{restarts} detector restarts",
    )
    assert [e["source_id"] for e in ingest_dlq] == [pill_id], ingest_dlq
    assert pill_entry["reason"] == "max_deliveries_exceeded"
    assert int(pill_entry["delivery_count"]) == MAX_DELIVERIES + 1
    assert not dlq[settings.detected_stream] and not dlq[settings.embedded_stream]
    assert not problems, problems
    assert result.indexed == result.expected > 0
    # Every one of them: a restarted detector reads new entries before it reclaims, and reclaims the
    # pill's batch-mates (delivered fewer times) before the pill again, however long restarts take.
    assert passed == len(behind), f"{len(behind) - passed} images behind the pill waited for it"
    if mode == "segfault":
        assert restarts >= MAX_DELIVERIES - 1
