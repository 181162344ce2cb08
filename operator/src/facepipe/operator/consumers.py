"""Consumers of pods that are gone, removed from the pipeline's consumer groups.

Every worker pod reads as its own consumer (REDIS_CONSUMER_NAME = the pod name), so each
rollout, rescheduling or scale-down leaves consumers behind that nobody will use again;
Redis keeps them forever and XINFO, the consumer counts and the dashboards fill up. The
operator's periodic pass deletes the ones with nothing pending that have been idle longer
than ``spec.redis.staleConsumerSeconds``: a live worker is never idle that long (it blocks
on XREADGROUP for READ_BLOCK_MS at a time), and a consumer with pending entries is left
for XAUTOCLAIM to empty first, so no entry is ever dropped.

The check and the deletion run as one script, so a consumer cannot take new entries
between them. Before Redis 7.2 a consumer's idle time counts from its last delivery, not
its last read, so a live worker on a quiet stream can be removed too: harmless, it has
nothing pending and Redis re-creates it with its next delivery.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis

# KEYS[1] stream, ARGV[1] group, ARGV[2] minimum idle ms -> names deleted.
_PRUNE = """
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return {} end
local deleted = {}
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    table.insert(deleted, info['name'])
  end
end
return deleted
"""


def prune_stale_consumers(
    client: redis.Redis, streams: Iterable[str], group: str, idle_seconds: int
) -> dict[str, list[str]]:
    """stream -> consumers deleted (idle at least ``idle_seconds``, nothing pending)."""
    prune = client.register_script(_PRUNE)
    deleted = {}
    for stream in streams:
        names = [
            name.decode() if isinstance(name, bytes) else str(name)
            for name in prune(keys=[stream], args=[group, idle_seconds * 1000])
        ]
        if names:
            deleted[stream] = names
    return deleted


def prune_at(redis_url: str, streams: Iterable[str], group: str, idle_seconds: int) -> dict[str, list[str]]:
    """:func:`prune_stale_consumers` on a client of its own (raises redis errors for the caller)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return prune_stale_consumers(client, streams, group, idle_seconds)
    finally:
        client.close()
