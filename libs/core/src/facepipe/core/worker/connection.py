"""The worker's Redis side: its client, its consumer group, and riding out outages."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from facepipe.core.settings import Settings
from facepipe.core.worker.backoff import Backoff

# Errors that mean "Redis is not reachable right now": wait and retry, never give up.
REDIS_OUTAGE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def worker_redis(settings: Settings) -> redis.Redis:
    """The worker's client: str responses, no hidden retries (the loop owns retrying).

    redis-py's own retry could resend a MULTI whose reply was lost and duplicate the
    output; the loop instead checks whether the entry is still pending first.
    ``surrogateescape`` keeps a non-UTF-8 payload byte-exact on its way to the DLQ.
    """
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        encoding_errors="surrogateescape",
        socket_timeout=settings.read_block_ms / 1000.0 + 10.0,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )


def ensure_group(client: redis.Redis, stream: str, group: str) -> bool:
    """Create ``group`` on ``stream`` from its first entry, creating the stream too (MKSTREAM).

    True when created, False when the group existed already (BUSYGROUP); any other
    refusal (e.g. WRONGTYPE: the key is not a stream) is raised.
    """
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    return True


@dataclass(frozen=True)
class GroupConsumer:
    """Where a worker reads: consumer ``name`` of ``group`` on ``stream``, through ``client``."""

    client: redis.Redis
    stream: str
    group: str
    name: str


class OutageTracker:
    """Logs a Redis outage once when it starts and once when it ends; counts its retries."""

    def __init__(self, redis_url: str, backoff: Backoff, log: logging.Logger) -> None:
        self.redis_url = redis_url
        self.backoff = backoff
        self.log = log
        self.attempts = 0
        self._since: float | None = None

    def failed(self, exc: BaseException) -> None:
        self.attempts += 1
        if self._since is None:
            self._since = time.monotonic()
            self.log.warning(
                "Redis unavailable at %s (%s: %s); retrying with backoff until it is back",
                redacted(self.redis_url),
                type(exc).__name__,
                exc,
            )

    def recovered(self) -> None:
        if self._since is not None:
            self.log.info("Redis connection restored after %.1f s", time.monotonic() - self._since)
            self._since = None
            self.attempts = 0

    def wait(self) -> bool:
        """Wait the backoff this outage has reached; False when asked to stop meanwhile."""
        return self.backoff.sleep(self.attempts)

    def until_answers(self, call: Callable[[], None]) -> bool:
        """Run ``call`` until Redis answers it; False when asked to stop first."""
        while True:
            try:
                call()
                self.recovered()
                return True
            except REDIS_OUTAGE as exc:
                self.failed(exc)
                if not self.wait():
                    return False


def redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, fit for a log line."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    port = f":{parsed.port}" if parsed.port else ""
    netloc = f"{parsed.username or ''}:***@{parsed.hostname or ''}{port}"
    return urlunparse(parsed._replace(netloc=netloc))
