"""Getting entries: reclaim idle pending ones (XPENDING IDLE + XCLAIM), read new ones (XREADGROUP).

Every claim counts as a delivery; an entry claimed more than MAX_DELIVERIES times is
dead-lettered (``max_deliveries_exceeded``) instead of handed out again.
"""

from __future__ import annotations

import contextlib
import logging

import redis

from facepipe.core import metrics
from facepipe.core.errors import PermanentError
from facepipe.core.settings import Settings
from facepipe.core.worker.connection import GroupConsumer
from facepipe.core.worker.delivery import Delivery
from facepipe.core.worker.messages import RawEntry

# Idle pending entries looked at per reclaim, to pick the one delivered the fewest times.
RECLAIM_SCAN = 100


class Reader:
    """Hands ``consumer`` its next entries, with their delivery counts."""

    def __init__(
        self,
        consumer: GroupConsumer,
        settings: Settings,
        *,
        batch_size: int,
        stage: str,
        delivery: Delivery,
        log: logging.Logger,
    ) -> None:
        self.consumer = consumer
        self.redis = consumer.client
        self.batch_size = batch_size
        self.read_block_ms = settings.read_block_ms
        self.claim_idle_ms = settings.claim_idle_ms
        self.max_deliveries = settings.max_deliveries
        self.stage = stage
        self.delivery = delivery
        self.log = log

    def read_new(self, count: int | None = None, block_ms: int | None = None) -> list[RawEntry]:
        """Up to ``count`` (a batch) never-delivered entries (XREADGROUP ``>``), blocking at most
        ``block_ms`` (READ_BLOCK_MS; at least 1, since 0 would block for ever)."""
        response = self.redis.xreadgroup(
            self.consumer.group,
            self.consumer.name,
            {self.consumer.stream: ">"},
            count=count or self.batch_size,
            block=max(1, block_ms if block_ms is not None else self.read_block_ms),
        )
        entries: list[tuple[str, dict[str, str] | None]] = []
        if isinstance(response, dict):  # RESP3
            for stream_entries in response.values():
                entries.extend(
                    stream_entries[0]
                    if stream_entries and isinstance(stream_entries[0], list)
                    else stream_entries
                )
        else:
            for _stream, stream_entries in response or []:
                entries.extend(stream_entries)
        return [(entry_id, fields or {}, 1) for entry_id, fields in entries]

    def reclaim(self) -> list[RawEntry]:
        """Claim one entry idle longer than CLAIM_IDLE_MS (from any consumer, dead or alive).

        One at a time: every claim counts as a delivery, and an entry that kills the whole
        process (a native decoder crash, the OOM killer) would otherwise take the entries
        claimed with it down each time, until all of them were dead-lettered together.

        Of the idle entries, the one delivered the fewest times goes first (the oldest among
        equals): a poison pill that crashed its consumer together with a batch is retried only
        after its batch-mates had their turn, never before each of them again.
        """
        stream, group = self.consumer.stream, self.consumer.group
        idle = self.redis.xpending_range(
            stream, group, min="-", max="+", count=RECLAIM_SCAN, idle=self.claim_idle_ms
        )
        if not idle:
            return []
        fewest = min(idle, key=lambda row: int(row["times_delivered"]))  # min keeps the oldest of a tie
        entry_id = str(fewest["message_id"])
        claimed = self.redis.xclaim(
            stream, group, self.consumer.name, min_idle_time=self.claim_idle_ms, message_ids=[entry_id]
        )
        if not claimed:  # another consumer claimed it first, or it was deleted (Redis 7 drops it)
            return []
        ((claimed_id, fields),) = claimed
        if fields is None:  # deleted from the stream while pending (Redis 6.2): nothing left to process
            self.redis.xack(stream, group, claimed_id)
            return []
        count = self._delivery_count(claimed_id)
        if count is None:  # acked by someone in between
            return []
        metrics.WORKER_REDELIVERIES.labels(stage=self.stage).inc()
        if count > self.max_deliveries:
            error = PermanentError(
                "max_deliveries_exceeded",
                f"delivered {count} times without being acked (MAX_DELIVERIES={self.max_deliveries})",
            )
            self.delivery.dead_letter(claimed_id, fields, count, error)
            return []
        self.log.info(
            "Reclaimed 1 message(s) idle for more than %d ms: %s (delivery %d)",
            self.claim_idle_ms,
            claimed_id,
            count,
        )
        return [(claimed_id, fields, count)]

    def hold(self, entry_ids: list[str]) -> None:
        """Reset the entries' idle time (XCLAIM JUSTID), so no other consumer reclaims them.

        A reclaim counts as a delivery; JUSTID does not count one.
        """
        with contextlib.suppress(redis.RedisError):  # Redis down too: nobody can reclaim them
            self.redis.xclaim(
                self.consumer.stream,
                self.consumer.group,
                self.consumer.name,
                min_idle_time=0,
                message_ids=entry_ids,
                justid=True,
            )

    def _delivery_count(self, entry_id: str) -> int | None:
        """How often the entry has been delivered, claims included; None once it is acked."""
        rows = self.redis.xpending_range(
            self.consumer.stream, self.consumer.group, min=entry_id, max=entry_id, count=1
        )
        return int(rows[0]["times_delivered"]) if rows else None
