"""ensure_group: the one consumer-group creation (MKSTREAM, BUSYGROUP tolerated), on real Redis."""

from __future__ import annotations

import pytest
import redis

from facepipe.core.worker import ensure_group

STREAM = "face-processing-queue"
GROUP = "pipeline"


def test_creates_stream_and_group_then_finds_them(redis_client: redis.Redis) -> None:
    assert not redis_client.exists(STREAM)
    assert ensure_group(redis_client, STREAM, GROUP) is True
    assert redis_client.type(STREAM) == "stream"
    assert [group["name"] for group in redis_client.xinfo_groups(STREAM)] == [GROUP]
    # The second call (another replica, a restart) finds the group and leaves it alone.
    redis_client.xadd(STREAM, {"message": "{}"})
    redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=1)
    assert ensure_group(redis_client, STREAM, GROUP) is False
    [group] = redis_client.xinfo_groups(STREAM)
    assert group["pending"] == 1


def test_group_starts_at_the_first_entry(redis_client: redis.Redis) -> None:
    """Entries published before any worker started are still delivered to the group."""
    ids = [redis_client.xadd(STREAM, {"message": f'{{"n": {n}}}'}) for n in range(3)]
    assert ensure_group(redis_client, STREAM, GROUP) is True
    [(_stream, entries)] = redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=10)
    assert [entry_id for entry_id, _fields in entries] == ids


def test_other_refusals_are_raised(redis_client: redis.Redis) -> None:
    redis_client.set(STREAM, "not a stream")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        ensure_group(redis_client, STREAM, GROUP)
