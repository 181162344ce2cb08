"""Getting entries: reclaim idle pending ones (XAUTOCLAIM) first, else read new ones (XREADGROUP).

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
        self._claim_cursor = "0-0"

    def read_new(self) -> list[RawEntry]:
        """Up to a batch of never-delivered entries (XREADGROUP ``>``), blocking READ_BLOCK_MS."""
        response = self.redis.xreadgroup(
            self.consumer.group,
            self.consumer.name,
            {self.consumer.stream: ">"},
            count=self.batch_size,
            block=self.read_block_ms,
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
        """
        reply = self.redis.xautoclaim(
            self.consumer.stream,
            self.consumer.group,
            self.consumer.name,
            min_idle_time=self.claim_idle_ms,
            start_id=self._claim_cursor,
            count=1,
        )
        self._claim_cursor, claimed = str(reply[0]), reply[1]
        if not claimed:
            return []
        counts = self._delivery_counts([entry_id for entry_id, _ in claimed])
        entries: list[RawEntry] = []
        for entry_id, fields in claimed:
            if fields is None:  # deleted from the stream while pending: nothing left to process
                self.redis.xack(self.consumer.stream, self.consumer.group, entry_id)
                continue
            count = counts.get(entry_id)
            if count is None:  # acked by someone in between
                continue
            metrics.WORKER_REDELIVERIES.labels(stage=self.stage).inc()
            if count > self.max_deliveries:
                error = PermanentError(
                    "max_deliveries_exceeded",
                    f"delivered {count} times without being acked (MAX_DELIVERIES={self.max_deliveries})",
                )
                self.delivery.dead_letter(entry_id, fields, count, error)
                continue
            entries.append((entry_id, fields, count))
        if entries:
            self.log.info(
                "Reclaimed %d message(s) idle for more than %d ms: %s",
                len(entries),
                self.claim_idle_ms,
                ", ".join(entry[0] for entry in entries),
            )
        return entries

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

    def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(
                self.consumer.stream, self.consumer.group, min=entry_id, max=entry_id, count=1
            )
        counts: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                counts[str(row["message_id"])] = int(row["times_delivered"])
        return counts
