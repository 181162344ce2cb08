"""Finishing an entry: ack it with its outputs and counters in one MULTI, or dead-letter it.

An entry is acked exactly when its output exists: every :class:`Publish` XADD, the
stats counters and the XACK go in one MULTI. A :class:`PermanentError` moves the
entry to ``<stream>:dlq`` (reason, error class, source, delivery count, the original
payload) in one MULTI with its XACK.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from pydantic import BaseModel

from facepipe.core import metrics
from facepipe.core.errors import PermanentError
from facepipe.core.settings import dlq_stream
from facepipe.core.stats import Stats
from facepipe.core.worker.backoff import Backoff
from facepipe.core.worker.connection import REDIS_OUTAGE, GroupConsumer, OutageTracker
from facepipe.core.worker.messages import Outcome, StreamMessage, raw_payload, tenant_of

SUMMARY_KEYS = ("faces_total", "accepted", "rejected", "dup_skipped")
MAX_ERROR_CHARS = 2000


class Delivery:
    """Acks and dead-letters the entries ``consumer`` holds, retrying through Redis outages."""

    def __init__(
        self,
        consumer: GroupConsumer,
        stats: Stats,
        *,
        stage: str,
        completes_pipeline: bool,  # the last pipeline stream: acks also count `worker_msgs_acked`
        backoff: Backoff,
        outages: OutageTracker,
        log: logging.Logger,
        on_finished: Callable[[], None] = lambda: None,  # an entry was acked (or dead-lettered)
    ) -> None:
        self.consumer = consumer
        self.on_finished = on_finished
        self.redis = consumer.client
        self.stream = consumer.stream
        self.dlq = dlq_stream(consumer.stream)
        self.stats = stats
        self.stage = stage
        self.completes_pipeline = completes_pipeline
        self.backoff = backoff
        self.outages = outages
        self.log = log

    def ack(self, message: StreamMessage, outcome: Outcome, started: float) -> None:
        """Publish the outcome's outputs, add its counters and ack ``message``, all in one MULTI."""
        tenant = message.tenant_id
        try:
            entries = [(out.stream, _encode_payload(out.payload), out.maxlen) for out in outcome.publish]
            counts = outcome.counter_writes()
        except (TypeError, ValueError) as exc:
            self.crashed(message, exc)
            return

        def queue(pipe: Any) -> None:
            for stream, encoded, maxlen in entries:
                pipe.xadd(stream, {"message": encoded}, maxlen=maxlen, approximate=maxlen is not None)
            for counter, n, reason in counts:
                self.stats.incr(counter, n, tenant, pipeline=pipe, reason=reason)
            if self.completes_pipeline:
                self.stats.incr("worker_msgs_acked", 1, tenant, pipeline=pipe)

        if not self._commit(message.id, queue):
            return
        # Prometheus follows the MULTI that ran (and only once, however often it was queued).
        for counter, n, reason in counts:
            self.stats.mirror(counter, n, reason)
        summary = {key: int(outcome.summary.get(key, 0)) for key in SUMMARY_KEYS}
        metrics.FACES_PROCESSED.labels(stage=self.stage).inc(summary["accepted"])
        metrics.WORKER_MSGS_ACKED.labels(stage=self.stage).inc()
        metrics.MESSAGE_DURATION.labels(stage=self.stage).observe(time.monotonic() - started)
        self.log.info(
            "Successfully processed message %s: faces_total=%d, accepted=%d, rejected=%d, dup_skipped=%d",
            message.id,
            summary["faces_total"],
            summary["accepted"],
            summary["rejected"],
            summary["dup_skipped"],
        )

    def dead_letter(
        self,
        entry_id: str,
        fields: dict[str, str],
        delivery_count: int,
        error: PermanentError,
        payload: dict[str, Any] | None = None,
    ) -> None:
        """XADD the entry to the DLQ with why it failed, and ack it, in one MULTI."""
        if error.reason == "missing_fields":
            self.log.warning("Message %s missing required fields: %s", entry_id, ", ".join(error.fields))
        tenant = tenant_of(payload) if payload is not None else tenant_of(_try_json(raw_payload(fields)))
        cause = error.__cause__ if error.__cause__ is not None else error
        entry = {
            "reason": error.reason,
            "error_class": type(cause).__name__,
            "error": error.message[:MAX_ERROR_CHARS],
            "source_stream": self.stream,
            "source_id": entry_id,
            "delivery_count": str(delivery_count),
            "consumer": self.consumer.name,
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "payload": raw_payload(fields),
        }

        def queue(pipe: Any) -> None:
            pipe.xadd(self.dlq, entry)
            self.stats.incr("worker_msgs_dlq", 1, tenant, pipeline=pipe, reason=error.reason)

        if self._commit(entry_id, queue):
            metrics.WORKER_MSGS_DLQ.labels(stage=self.stage, reason=error.reason).inc()
            metrics.WORKER_DEAD_LETTERS.labels(stage=self.stage).inc()
            self.log.warning(
                "Message %s moved to %s: %s: %s", entry_id, self.dlq, error.reason, error.message
            )

    def crashed(self, message: StreamMessage, result: object) -> None:
        """Log a delivery that crashed; the entry stays pending, to be reclaimed and counted."""
        if isinstance(result, BaseException):
            self.log.error(
                "Message %s crashed the %s handler (delivery %d); left pending for redelivery",
                message.id,
                self.stage,
                message.delivery_count,
                exc_info=result,
            )
        else:
            self.log.error(
                "Handler %s returned %r for message %s (expected Outcome or PermanentError); left pending",
                self.stage,
                result,
                message.id,
            )

    def _commit(self, entry_id: str, queue: Callable[[Any], None]) -> bool:
        """One MULTI: the queued writes, then XACK. True once it ran; False if we stopped first.

        Through a Redis outage it retries, but only while the entry is still pending:
        a MULTI whose reply was lost may have run, and must not run twice.
        """
        attempt = 0
        while True:
            try:
                if attempt and not self._still_pending(entry_id):
                    self.outages.recovered()
                    return True
                pipe = self.redis.pipeline(transaction=True)
                queue(pipe)
                pipe.xack(self.stream, self.consumer.group, entry_id)
                results = pipe.execute()
                self.outages.recovered()
                self.on_finished()
                if results and results[-1] == 0:
                    self.log.warning(
                        "Message %s had already been acked by another consumer: it was reclaimed while "
                        "this one still processed it (processing took longer than CLAIM_IDLE_MS?)",
                        entry_id,
                    )
                return True
            except REDIS_OUTAGE as exc:
                attempt += 1
                self.outages.failed(exc)
                if not self.backoff.sleep(attempt):
                    self.log.info("Stopping while Redis is down: message %s left pending", entry_id)
                    return False
            except redis.ResponseError as exc:
                # A command failed inside EXEC (e.g. WRONGTYPE: an output key is not a stream).
                # Redis does not roll back, so the XACK queued last may have run anyway.
                self.log.error(
                    "Redis rejected a write of message %s (%s); its ack may have gone through: "
                    "check %s and the output streams",
                    entry_id,
                    exc,
                    self.stream,
                )
                return False
            except Exception:
                self.log.exception("Could not commit message %s; left pending for redelivery", entry_id)
                return False

    def _still_pending(self, entry_id: str) -> bool:
        rows = self.redis.xpending_range(
            self.stream, self.consumer.group, min=entry_id, max=entry_id, count=1
        )
        return bool(rows)


def _try_json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None


def _encode_payload(payload: dict[str, Any] | BaseModel) -> str:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
