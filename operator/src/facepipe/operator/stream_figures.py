"""Per-stream figures read from Redis for the FacePipeline status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import redis

from facepipe.core.redisconn import connect
from facepipe.core.settings import dlq_stream
from facepipe.operator.constants import StreamRole


@dataclass(frozen=True)
class StreamFigures:
    name: str
    role: str
    length: int
    lag: int
    pending: int
    consumers: int
    dlqLength: int

    def as_status(self) -> dict[str, Any]:
        return asdict(self)


def _group_info(client: redis.Redis, stream: str, group: str) -> dict[str, Any] | None:
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:  # no such stream yet
        return None
    for info in groups:
        if info.get("name") == group:
            return info
    return None


def _lag(client: redis.Redis, stream: str, group: dict[str, Any] | None, length: int) -> int:
    if group is None:
        return length  # no consumer group yet: every entry is still waiting
    lag = group.get("lag")
    if lag is not None:
        return int(lag)
    # Redis cannot tell the lag after deletions; count what follows the last delivered id.
    last = group.get("last-delivered-id") or "0-0"
    return len(client.xrange(stream, min=f"({last}", max="+", count=100_000))


def read_stream_figures(
    redis_url: str, streams: Mapping[StreamRole, str], group: str, *, timeout_s: float = 3.0
) -> list[StreamFigures]:
    """length, lag, pending, consumers and DLQ length of each stream for ``group``.

    Raises redis errors (ConnectionError, TimeoutError, ...) for the caller to report.
    """
    client = connect(
        redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
    )
    try:
        figures = []
        for role, stream in streams.items():
            length = int(client.xlen(stream))
            info = _group_info(client, stream, group)
            figures.append(
                StreamFigures(
                    name=stream,
                    role=role,
                    length=length,
                    lag=_lag(client, stream, info, length),
                    pending=int(info.get("pending", 0)) if info else 0,
                    consumers=int(info.get("consumers", 0)) if info else 0,
                    dlqLength=int(client.xlen(dlq_stream(stream))),
                )
            )
        return figures
    finally:
        client.close()
