"""Trimming a consumed stream: acked entries do not accumulate.

Every entry a worker acks (or dead-letters, which acks it too) would otherwise stay in Redis
for ever, with its payload (a detected entry carries its crops, an embedded one its
embeddings too). After it finishes entries, a worker trims its input stream up to the
oldest entry any consumer group still needs: the oldest pending entry of each group, or the
first one the group has not read yet. Entries younger than STREAM_RETENTION_MS are kept
(acked or not), for inspection; -1 turns trimming off.

``XTRIM MINID``, never ``XDEL``: trimming from the head leaves no tombstones, so the group's
``lag`` in ``XINFO GROUPS`` stays exact (KEDA's ``lagCount`` and the ``facepipe_stream_lag``
gauge read it), and the stream's length is what is left to do plus the retention.
"""

from __future__ import annotations

import logging
import time

import redis

# The decision is made inside Redis, so that an XADD, a read or an ack cannot slip in between
# reading the groups' positions and trimming. KEYS[1]: the stream; ARGV[1]: retention (ms).
# Returns the number of entries trimmed (-1: no consumer group, nothing is trimmed).
TRIM_SCRIPT = """
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return {tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))}
end
local function below(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return -1 end
local keep = nil
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local last = parse(info['last-delivered-id'])
  local needed = {last[1], last[2] + 1}  -- the first entry this group has not read
  if tonumber(info['pending']) > 0 then
    local oldest = redis.call('XPENDING', KEYS[1], info['name'])[2]
    if oldest then
      local pending = parse(oldest)
      if below(pending, needed) then needed = pending end
    end
  end
  if keep == nil or below(needed, keep) then keep = needed end
end
local retention = tonumber(ARGV[1])
if retention > 0 then
  local now = redis.call('TIME')
  local cutoff = {tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - retention, 0}
  if below(cutoff, keep) then keep = cutoff end
end
if keep[1] < 0 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', keep[1], keep[2]))
"""

# Trim at most this often while busy (each trim is one short script); an idle loop trims at once.
TRIM_INTERVAL_S = 0.5


class StreamTrimmer:
    """Trims ``stream`` after its entries are finished (see the module doc)."""

    def __init__(self, client: redis.Redis, stream: str, retention_ms: int, log: logging.Logger) -> None:
        self.stream = stream
        self.retention_ms = retention_ms
        self.log = log
        self._script = client.register_script(TRIM_SCRIPT)
        self._finished = 0  # entries acked or dead-lettered since the last trim
        self._last = 0.0

    @property
    def enabled(self) -> bool:
        return self.retention_ms >= 0

    def finished(self, count: int = 1) -> None:
        """``count`` entries were acked (or dead-lettered): there may be something to trim."""
        self._finished += count

    def after_iteration(self, busy: bool) -> None:
        """Trim when something was finished (at once when idle, else at most every TRIM_INTERVAL_S),
        and, with a retention, every TRIM_INTERVAL_S as entries age out of it."""
        if not self.enabled:
            return
        due = time.monotonic() - self._last >= TRIM_INTERVAL_S
        if (self._finished and (due or not busy)) or (self.retention_ms > 0 and due):
            self.trim()

    def trim(self) -> int:
        """Trim now; the number of entries removed (0 when Redis is unreachable: next time)."""
        self._last = time.monotonic()
        try:
            removed = int(self._script(keys=[self.stream], args=[self.retention_ms]))
        except (redis.ConnectionError, redis.TimeoutError):
            return 0  # the loop meets the outage on its next read and logs it there
        except redis.ResponseError as exc:  # e.g. the key is not a stream: the read says so too
            self.log.debug("Could not trim %s: %s", self.stream, exc)
            return 0
        self._finished = 0
        if removed > 0:
            self.log.debug("Trimmed %d finished entries from %s", removed, self.stream)
        return max(removed, 0)
