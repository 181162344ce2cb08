"""The one Redis Streams worker loop every stage (detector, embedder, indexer) runs.

A stage supplies a :class:`StageHandler`; :class:`Worker` does everything else:

1. ensure the consumer group (``XGROUP CREATE <stream> <group> 0 MKSTREAM``, BUSYGROUP is fine);
2. loop: reclaim entries idle longer than ``CLAIM_IDLE_MS`` from any consumer
   (``XAUTOCLAIM``; delivered more than ``MAX_DELIVERIES`` times → DLQ
   ``max_deliveries_exceeded``), else ``XREADGROUP >`` up to the batch size;
3. decode the JSON of field ``message`` (legacy ``data``), check required fields;
4. ``handler.process_batch``; per message one MULTI: XADD every :class:`Publish`,
   the stats counters, XACK — so an entry is acked exactly when its output exists;
5. :class:`~facepipe.core.errors.PermanentError` → one MULTI: XADD ``<stream>:dlq`` + XACK;
   transient errors → the messages are retried in-process with exponential backoff,
   never dead-lettered; any other exception → that delivery crashed: it stays
   pending and is reclaimed after ``CLAIM_IDLE_MS``.

SIGTERM/SIGINT: stop reading, finish the batch in hand, ack, exit 0 (a second
signal exits at once; unacked entries are reclaimed by the other consumers).
Redis going away never kills the loop: it logs once per outage and retries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar, overload
from urllib.parse import urlparse, urlunparse

import redis
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry

from facepipe.core import metrics
from facepipe.core.errors import PermanentError, is_transient
from facepipe.core.logs import setup_logging
from facepipe.core.settings import Settings, dlq_stream, get_settings
from facepipe.core.stats import Stats
from facepipe.core.tenancy import is_valid_tenant_id

PAYLOAD_FIELDS = ("message", "data")  # preferred, legacy
SUMMARY_KEYS = ("faces_total", "accepted", "rejected", "dup_skipped")
DISABLED_LINE = "Queue worker disabled (ENABLE_QUEUE_WORKER=false): not consuming, exiting"
# Errors that mean "Redis is not reachable right now": wait and retry, never give up.
REDIS_OUTAGE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
MAX_ERROR_CHARS = 2000


@dataclass
class StreamMessage:
    """One stream entry handed to a handler."""

    id: str
    stream: str
    payload: dict[str, Any]
    fields: dict[str, str]
    delivery_count: int

    @property
    def raw_payload(self) -> str:
        return _raw_payload(self.fields)

    @property
    def tenant_id(self) -> str | None:
        return _tenant_of(self.payload)


@dataclass
class Publish:
    """An output entry, XADDed (as JSON in field ``message``) in the same MULTI as the source XACK."""

    stream: str
    payload: dict[str, Any] | BaseModel
    maxlen: int | None = None  # approximate MAXLEN trim of the output stream; None = never trim


@dataclass
class Outcome:
    """What a handler did with one message.

    ``summary`` is logged (faces_total, accepted, rejected, dup_skipped); ``counters``
    are runbook stats counters (``faces_processed``, ``faces_rejected``,
    ``faces_dup_skipped``) added in the same MULTI as the ack, globally and for the
    message's tenant.
    """

    publish: list[Publish] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)


class StageHandler(Protocol):
    name: str  # "detector" | "embedder" | "indexer": the metric label `stage`
    input_stream: str
    required_fields: tuple[str, ...]

    def setup(self) -> None: ...

    def process_batch(self, messages: list[StreamMessage]) -> Sequence[Outcome | BaseException]:
        """One result per message, in order: Outcome, PermanentError, a transient
        exception (that message is retried) or any other exception (that delivery crashed)."""
        ...

    def close(self) -> None: ...


RawEntry = tuple[str, dict[str, str], int]  # (entry id, fields, delivery count)


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


class Worker:
    """Consume ``handler.input_stream`` as ``settings.consumer_name()`` in ``REDIS_GROUP_NAME``."""

    def __init__(
        self,
        settings: Settings,
        handler: StageHandler,
        max_batch: int | None = None,
        once: bool = False,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.handler = handler
        self.batch_size = max_batch or settings.worker_batch_size
        self.once = once
        self._owns_redis = redis_client is None
        self.redis = redis_client if redis_client is not None else worker_redis(settings)
        self.stream = handler.input_stream
        self.group = settings.redis_group_name
        self.consumer = settings.consumer_name()
        self.dlq = dlq_stream(self.stream)
        self.stage = handler.name
        self.stats = Stats(self.redis, stage=handler.name)
        # `worker_msgs_acked` in /stats counts messages that finished the whole pipeline,
        # so it is counted where the last stream is consumed (per-stage acks: Prometheus).
        self.completes_pipeline = self.stream == settings.pipeline_streams[-1]
        self.log = logging.getLogger(f"facepipe.worker.{handler.name}")
        self._stop = threading.Event()
        self._signals = 0
        self._claim_cursor = "0-0"
        self._outage_since: float | None = None
        self._outage_attempts = 0

    # ----------------------------------------------------------------- control
    def stop(self) -> None:
        """Ask the loop to stop after the batch in hand (what SIGTERM does)."""
        self._stop.set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            # Unacked entries stay pending and are reclaimed by the other consumers.
            self.log.warning("Second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(1)
        self.log.info("%s received: finishing the batch in hand, then exiting", signal.Signals(signum).name)
        self._stop.set()

    def _backoff_delay(self, attempt: int) -> float:
        initial, cap = self.settings.retry_backoff_initial_s, self.settings.retry_backoff_max_s
        # Jitter, so replicas that failed together do not retry in lockstep.
        return min(cap, initial * 2 ** max(attempt - 1, 0)) * random.uniform(0.8, 1.0)

    def _sleep_backoff(self, attempt: int) -> bool:
        """Wait the attempt's backoff; False when asked to stop meanwhile."""
        return not self._stop.wait(self._backoff_delay(attempt))

    # -------------------------------------------------------------------- run
    def run(self) -> int:
        """Run until stopped (or one batch with ``once``); returns the process exit code."""
        if not self.settings.enable_queue_worker:
            self.log.info(DISABLED_LINE)
            return 0
        previous = self._install_signal_handlers()
        try:
            self.log.info("Starting Redis Streams worker...")
            code = self._setup_handler()
            if code is not None:
                return code
            if not self._until_redis_answers(self._ensure_group):
                return 0
            self.log.info("Consumer: %s", self.consumer)
            self.log.info("Stream: %s", self.stream)
            self.log.info("Group: %s", self.group)
            self.log.info("Batch size: %d", self.batch_size)
            metrics.WORKER_INFLIGHT.labels(stage=self.stage).set(0)
            self.log.info("Worker started, waiting for messages...")
            while not self._stop.is_set():
                if self._iteration() and self.once:
                    break
            self.log.info("Worker stopped")
            return 0
        finally:
            self._close_handler()
            if self._owns_redis:
                self.redis.close()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # embedded in another program: it calls stop()
        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _setup_handler(self) -> int | None:
        attempt = 0
        while True:
            try:
                self.handler.setup()
                return None
            except Exception as exc:
                if not is_transient(exc):
                    self.log.exception("Handler %s failed to start", self.stage)
                    return 1
                attempt += 1
                self.log.warning(
                    "Handler setup hit a transient error (%s: %s); retrying", type(exc).__name__, exc
                )
                if not self._sleep_backoff(attempt):
                    return 0

    def _close_handler(self) -> None:
        try:
            self.handler.close()
        except Exception:
            self.log.exception("Handler %s failed to close cleanly", self.stage)

    def _ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            self.log.info("Created consumer group %s on %s", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _until_redis_answers(self, call: Callable[[], None]) -> bool:
        while True:
            try:
                call()
                self._redis_recovered()
                return True
            except REDIS_OUTAGE as exc:
                self._redis_outage(exc)
                if not self._sleep_backoff(self._outage_attempts):
                    return False

    def _redis_outage(self, exc: BaseException) -> None:
        self._outage_attempts += 1
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.log.warning(
                "Redis unavailable at %s (%s: %s); retrying with backoff until it is back",
                _redacted(self.settings.redis_url),
                type(exc).__name__,
                exc,
            )

    def _redis_recovered(self) -> None:
        if self._outage_since is not None:
            self.log.info("Redis connection restored after %.1f s", time.monotonic() - self._outage_since)
            self._outage_since = None
            self._outage_attempts = 0

    # ------------------------------------------------------------------ loop
    def _iteration(self) -> bool:
        """Reclaim or read one batch and handle it; False when Redis failed before a batch was read."""
        try:
            entries = self._reclaim()
            if not entries and not self._stop.is_set():
                entries = self._read_new()
            self._redis_recovered()
        except REDIS_OUTAGE as exc:
            self._redis_outage(exc)
            self._sleep_backoff(self._outage_attempts)
            return False
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):
                # The stream or group vanished (Redis restarted without persistence, or was flushed).
                self.log.warning(
                    "Consumer group %s on %s is gone (%s); recreating it", self.group, self.stream, exc
                )
                with contextlib.suppress(redis.RedisError):  # an outage shows up again on the next read
                    self._ensure_group()
            else:  # e.g. WRONGTYPE: the stream key holds something else; say so and keep trying
                self.log.error("Redis refused to read %s: %s", self.stream, exc)
                self._stop.wait(self.settings.retry_backoff_max_s)
            return False
        if entries:
            try:
                self._handle(entries)
            except Exception:  # a bug here must not kill the worker; the entries stay pending
                self.log.exception("Unexpected error handling %d entries; left pending", len(entries))
        return True

    def _read_new(self) -> list[RawEntry]:
        response = self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=self.batch_size,
            block=self.settings.read_block_ms,
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

    def _reclaim(self) -> list[RawEntry]:
        """Claim one entry idle longer than CLAIM_IDLE_MS (from any consumer, dead or alive).

        One at a time: every claim counts as a delivery, and an entry that kills the whole
        process (a native decoder crash, the OOM killer) would otherwise take the entries
        claimed with it down each time, until all of them were dead-lettered together.
        """
        reply = self.redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=self.settings.claim_idle_ms,
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
                self.redis.xack(self.stream, self.group, entry_id)
                continue
            count = counts.get(entry_id)
            if count is None:  # acked by someone in between
                continue
            metrics.WORKER_REDELIVERIES.labels(stage=self.stage).inc()
            if count > self.settings.max_deliveries:
                error = PermanentError(
                    "max_deliveries_exceeded",
                    f"delivered {count} times without being acked "
                    f"(MAX_DELIVERIES={self.settings.max_deliveries})",
                )
                self._dead_letter(entry_id, fields, count, error)
                continue
            entries.append((entry_id, fields, count))
        if entries:
            self.log.info(
                "Reclaimed %d message(s) idle for more than %d ms: %s",
                len(entries),
                self.settings.claim_idle_ms,
                ", ".join(entry[0] for entry in entries),
            )
        return entries

    def _delivery_counts(self, entry_ids: list[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        counts: dict[str, int] = {}
        for rows in pipe.execute():
            for row in rows:
                counts[str(row["message_id"])] = int(row["times_delivered"])
        return counts

    # ---------------------------------------------------------------- handle
    def _handle(self, entries: list[RawEntry]) -> None:
        messages: list[StreamMessage] = []
        for entry_id, fields, count in entries:
            try:
                messages.append(self._decode(entry_id, fields, count))
            except PermanentError as error:
                self._dead_letter(entry_id, fields, count, error)
        if messages:
            self._process(messages)

    def _decode(self, entry_id: str, fields: dict[str, str], count: int) -> StreamMessage:
        field_name = next((name for name in PAYLOAD_FIELDS if name in fields), None)
        if field_name is None:
            raise PermanentError(
                "missing_payload",
                f"entry has no 'message' (or legacy 'data') field; fields: {sorted(fields)}",
            )
        raw = fields[field_name]
        try:
            payload = json.loads(raw.encode("utf-8"))
        except UnicodeEncodeError as exc:  # undecodable bytes survived as surrogates
            raise PermanentError("invalid_json", f"payload is not UTF-8: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise PermanentError("invalid_json", f"payload is not valid JSON: {exc}") from exc
        if not isinstance(payload, dict):
            kind = type(payload).__name__
            raise PermanentError("invalid_json", f"payload must be a JSON object, got {kind}")
        missing = tuple(name for name in self.handler.required_fields if payload.get(name) in (None, ""))
        if missing:
            raise PermanentError(
                "missing_fields", f"missing required fields: {', '.join(missing)}", fields=missing
            )
        return StreamMessage(entry_id, self.stream, payload, fields, count)

    def _process(self, messages: list[StreamMessage]) -> None:
        """Run the handler on ``messages`` until each is acked, dead-lettered, crashed or we stop."""
        started = time.monotonic()
        attempt = 0
        todo = messages
        while todo:
            results = self._call_handler(todo)
            if isinstance(results, BaseException) and not is_transient(results):
                if len(todo) > 1:
                    # Which message broke the batch is unknown: run each alone, so one
                    # poison pill cannot use up the others' delivery attempts.
                    self.log.warning(
                        "Batch of %d raised %s: %s; processing its messages one by one",
                        len(todo),
                        type(results).__name__,
                        results,
                    )
                    for message in todo:
                        self._process([message])
                    return
                results = [results]
            if isinstance(results, BaseException):  # transient: the whole batch again
                retry, error = todo, results
            else:
                retry, error = [], None
                for message, result in zip(todo, results, strict=True):
                    if isinstance(result, Outcome):
                        self._ack(message, result, started)
                    elif isinstance(result, PermanentError):
                        self._dead_letter(
                            message.id, message.fields, message.delivery_count, result, message.payload
                        )
                    elif isinstance(result, BaseException) and is_transient(result):
                        retry.append(message)
                        error = error or result
                    else:
                        self._crashed(message, result)
            if not retry:
                return
            attempt += 1
            metrics.WORKER_TRANSIENT_ERRORS.labels(stage=self.stage).inc()
            self.log.warning(
                "Transient error on %d message(s) (attempt %d): %s: %s; retrying with backoff",
                len(retry),
                attempt,
                type(error).__name__,
                error,
            )
            if not self._wait_holding(retry, attempt):
                self.log.info("Stopping: %d message(s) left pending for redelivery", len(retry))
                return
            todo = retry

    def _call_handler(self, messages: list[StreamMessage]) -> list[Any] | BaseException:
        inflight = metrics.WORKER_INFLIGHT.labels(stage=self.stage)
        inflight.set(len(messages))
        try:
            results = list(self.handler.process_batch(messages))
        except Exception as exc:
            return exc
        finally:
            inflight.set(0)
        if len(results) != len(messages):
            return RuntimeError(
                f"{self.stage}.process_batch returned {len(results)} results for {len(messages)} messages"
            )
        return results

    def _wait_holding(self, messages: list[StreamMessage], attempt: int) -> bool:
        """Wait the backoff of ``attempt`` while keeping the entries; False when asked to stop.

        Their idle time is reset (XCLAIM JUSTID) at least every CLAIM_IDLE_MS / 2, so no
        other consumer reclaims them: a reclaim counts as a delivery, and enough of them
        during a long outage would dead-letter a message for being transient. JUSTID
        does not count one.
        """
        remaining = self._backoff_delay(attempt)
        step = self.settings.claim_idle_ms / 2000.0
        while True:
            with contextlib.suppress(redis.RedisError):  # Redis down too: nobody can reclaim them
                self.redis.xclaim(
                    self.stream,
                    self.group,
                    self.consumer,
                    min_idle_time=0,
                    message_ids=[message.id for message in messages],
                    justid=True,
                )
            if remaining <= 0:
                return True
            if self._stop.wait(min(step, remaining)):
                return False
            remaining -= step

    def _crashed(self, message: StreamMessage, result: object) -> None:
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

    # ---------------------------------------------------------------- commit
    def _ack(self, message: StreamMessage, outcome: Outcome, started: float) -> None:
        tenant = message.tenant_id
        try:
            entries = [(out.stream, _encode_payload(out.payload), out.maxlen) for out in outcome.publish]
        except (TypeError, ValueError) as exc:
            self._crashed(message, exc)
            return

        def queue(pipe: Any) -> None:
            for stream, encoded, maxlen in entries:
                pipe.xadd(stream, {"message": encoded}, maxlen=maxlen, approximate=maxlen is not None)
            for counter, n in outcome.counters.items():
                self.stats.incr(counter, n, tenant, pipeline=pipe)
            if self.completes_pipeline:
                self.stats.incr("worker_msgs_acked", 1, tenant, pipeline=pipe)

        if not self._commit(message.id, queue):
            return
        metrics.WORKER_MSGS_ACKED.labels(stage=self.stage).inc()
        metrics.MESSAGE_DURATION.labels(stage=self.stage).observe(time.monotonic() - started)
        summary = {key: int(outcome.summary.get(key, 0)) for key in SUMMARY_KEYS}
        self.log.info(
            "Successfully processed message %s: faces_total=%d, accepted=%d, rejected=%d, dup_skipped=%d",
            message.id,
            summary["faces_total"],
            summary["accepted"],
            summary["rejected"],
            summary["dup_skipped"],
        )

    def _dead_letter(
        self,
        entry_id: str,
        fields: dict[str, str],
        delivery_count: int,
        error: PermanentError,
        payload: dict[str, Any] | None = None,
    ) -> None:
        if error.reason == "missing_fields":
            self.log.warning("Message %s missing required fields: %s", entry_id, ", ".join(error.fields))
        tenant = _tenant_of(payload) if payload is not None else _tenant_of(_try_json(_raw_payload(fields)))
        cause = error.__cause__ if error.__cause__ is not None else error
        entry = {
            "reason": error.reason,
            "error_class": type(cause).__name__,
            "error": error.message[:MAX_ERROR_CHARS],
            "source_stream": self.stream,
            "source_id": entry_id,
            "delivery_count": str(delivery_count),
            "consumer": self.consumer,
            "failed_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "payload": _raw_payload(fields),
        }

        def queue(pipe: Any) -> None:
            pipe.xadd(self.dlq, entry)
            self.stats.incr("worker_msgs_dlq", 1, tenant, pipeline=pipe, reason=error.reason)

        if self._commit(entry_id, queue):
            metrics.WORKER_MSGS_DLQ.labels(stage=self.stage, reason=error.reason).inc()
            self.log.warning(
                "Message %s moved to %s: %s: %s", entry_id, self.dlq, error.reason, error.message
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
                    self._redis_recovered()
                    return True
                pipe = self.redis.pipeline(transaction=True)
                queue(pipe)
                pipe.xack(self.stream, self.group, entry_id)
                results = pipe.execute()
                self._redis_recovered()
                if results and results[-1] == 0:
                    self.log.warning(
                        "Message %s had already been acked by another consumer: it was reclaimed while "
                        "this one still processed it (processing took longer than CLAIM_IDLE_MS?)",
                        entry_id,
                    )
                return True
            except REDIS_OUTAGE as exc:
                attempt += 1
                self._redis_outage(exc)
                if not self._sleep_backoff(attempt):
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
        rows = self.redis.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return bool(rows)


# ------------------------------------------------------------------- helpers
def _raw_payload(fields: dict[str, str]) -> str:
    for name in PAYLOAD_FIELDS:
        if name in fields:
            return fields[name]
    return json.dumps(fields, ensure_ascii=False)


def _try_json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        return None


def _tenant_of(payload: Any) -> str | None:
    """The message's tenant (ingest: ``tenant_id``; later stages: ``ingest.tenant_id``) when valid."""
    if not isinstance(payload, dict):
        return None
    tenant = payload.get("tenant_id")
    if tenant is None and isinstance(payload.get("ingest"), dict):
        tenant = payload["ingest"].get("tenant_id")
    return tenant if is_valid_tenant_id(tenant) else None


def _encode_payload(payload: dict[str, Any] | BaseModel) -> str:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json()
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _redacted(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    port = f":{parsed.port}" if parsed.port else ""
    netloc = f"{parsed.username or ''}:***@{parsed.hostname or ''}{port}"
    return urlunparse(parsed._replace(netloc=netloc))


# ------------------------------------------------------------ concurrency
T = TypeVar("T")
R = TypeVar("R")


@overload
def map_concurrently(
    fn: Callable[[T], R], items: Iterable[T], limit: int, *, return_exceptions: Literal[False] = False
) -> list[R]: ...


@overload
def map_concurrently(
    fn: Callable[[T], R], items: Iterable[T], limit: int, *, return_exceptions: Literal[True]
) -> list[R | Exception]: ...


def map_concurrently(
    fn: Callable[[T], R], items: Iterable[T], limit: int, *, return_exceptions: bool = False
) -> list[Any]:
    """``[fn(item) for item in items]`` with at most ``limit`` calls at a time, results in order.

    Threads, because the work is I/O (S3, Qdrant) or releases the GIL (onnxruntime).
    ``return_exceptions=True`` puts each item's exception in its slot (what a handler
    returns per message); otherwise the first exception is raised after all calls end.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    work = list(items)
    if limit == 1 or len(work) <= 1:
        outcomes: list[tuple[bool, Any]] = []
        for item in work:
            try:
                outcomes.append((True, fn(item)))
            except Exception as exc:
                outcomes.append((False, exc))
    else:
        with ThreadPoolExecutor(max_workers=min(limit, len(work)), thread_name_prefix="facepipe-map") as pool:
            futures = [pool.submit(fn, item) for item in work]
        outcomes = [(future.exception() is None, future.exception() or future.result()) for future in futures]
    if not return_exceptions:
        for ok, value in outcomes:
            if not ok:
                raise value
    return [value for _ok, value in outcomes]


# --------------------------------------------------------------------- CLI
def _batch_size_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be in 1..1000, got {value}")
    return value


def run_worker_cli(
    handler_factory: Callable[[Settings], StageHandler],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
) -> int:
    """The ``__main__`` of every stage: ``[--once] [--max-batch N]``; returns the exit code.

    An invalid setting exits with one line naming the variable (no traceback);
    ``ENABLE_QUEUE_WORKER=false`` logs why and exits 0 without building the handler.
    """
    parser = argparse.ArgumentParser(prog=prog, description="Redis Streams worker of one face-pipeline stage")
    parser.add_argument(
        "--once", action="store_true", help="process one batch (or wait one empty block), then exit"
    )
    parser.add_argument(
        "--max-batch",
        type=_batch_size_arg,
        default=None,
        metavar="N",
        help="messages per batch (default: WORKER_BATCH_SIZE)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()  # raises ConfigError (a one-line SystemExit) on a bad variable
    setup_logging(settings.log_level)
    log = logging.getLogger("facepipe.worker")
    if not settings.enable_queue_worker:
        log.info(DISABLED_LINE)
        return 0
    try:
        metrics.start_metrics_server(settings.metrics_port)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 2
    try:
        handler = handler_factory(settings)
    except Exception:
        log.exception("Cannot build the stage handler")
        return 1
    return Worker(settings, handler, max_batch=args.max_batch, once=args.once).run()
