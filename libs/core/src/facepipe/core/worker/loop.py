"""The worker loop: read a batch, run the stage's handler, finish every message; stop cleanly.

SIGTERM/SIGINT: stop reading, finish the batch in hand, ack, exit 0 (a second signal
exits at once; unacked entries are reclaimed by the other consumers). Transient
errors are retried in-process with backoff; Redis going away never kills the loop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any

import redis

from facepipe.core import metrics
from facepipe.core.errors import PermanentError, is_transient
from facepipe.core.redisconn import hash_tag, is_cluster
from facepipe.core.settings import Settings
from facepipe.core.stats import Stats
from facepipe.core.worker.backoff import Backoff
from facepipe.core.worker.connection import (
    REDIS_OUTAGE,
    GroupConsumer,
    OutageTracker,
    ensure_group,
    worker_redis,
)
from facepipe.core.worker.delivery import Delivery
from facepipe.core.worker.messages import (
    FillsBatches,
    Outcome,
    RawEntry,
    StageHandler,
    StreamMessage,
    decode_entry,
)
from facepipe.core.worker.reading import Reader
from facepipe.core.worker.trimming import StreamTrimmer

DISABLED_LINE = "Queue worker disabled (ENABLE_QUEUE_WORKER=false): not consuming, exiting"


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
        self.stage = handler.name
        # On a Redis Cluster the stream's hash tag is its tenant: the ack MULTI stays in its slot.
        self.slot_tag = hash_tag(self.stream) if is_cluster(self.redis) else None
        self.stats = Stats(self.redis, stage=handler.name, slot_tag=self.slot_tag)
        # `worker_msgs_acked` in /stats counts messages that finished the whole pipeline,
        # so it is counted where the last stream is consumed (per-stage acks: Prometheus).
        self.completes_pipeline = self.stream == settings.pipeline_streams[-1]
        self.log = logging.getLogger(f"facepipe.worker.{handler.name}")
        self._stop = threading.Event()
        self._signals = 0
        self._reclaim_first = False  # a (re)started consumer reads new entries first: _next_entries
        self._backoff = Backoff(settings.retry_backoff_initial_s, settings.retry_backoff_max_s, self._stop)
        self._outages = OutageTracker(settings.redis_url, self._backoff, self.log)
        group_consumer = GroupConsumer(self.redis, self.stream, self.group, self.consumer)
        self._trimmer = StreamTrimmer(self.redis, self.stream, settings.stream_retention_ms, self.log)
        self._delivery = Delivery(
            group_consumer,
            self.stats,
            stage=self.stage,
            completes_pipeline=self.completes_pipeline,
            backoff=self._backoff,
            outages=self._outages,
            log=self.log,
            on_finished=self._trimmer.finished,
        )
        self._reader = Reader(
            group_consumer,
            settings,
            batch_size=self.batch_size,
            stage=self.stage,
            delivery=self._delivery,
            log=self.log,
        )
        self.dlq = self._delivery.dlq

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

    # -------------------------------------------------------------------- run
    def run(self) -> int:
        """Run until stopped (or one batch with ``once``); returns the process exit code."""
        if not self.settings.enable_queue_worker:
            self.log.info(DISABLED_LINE)
            return 0
        problem = self._cluster_problem()
        if problem is not None:
            self.log.error("Cannot start: %s", problem)
            return 2
        previous = self._install_signal_handlers()
        try:
            self.log.info("Starting Redis Streams worker...")
            code = self._setup_handler()
            if code is not None:
                return code
            if not self._outages.until_answers(self._ensure_group):
                return 0
            self.log.info("Consumer: %s", self.consumer)
            self.log.info("Stream: %s", self.stream)
            self.log.info("Group: %s", self.group)
            self.log.info("Batch size: %d", self.batch_size)
            metrics.start_stage_series(self.stage)
            self.log.info("Worker started, waiting for messages...")
            metrics.mark_ready()
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

    def _cluster_problem(self) -> str | None:
        if not is_cluster(self.redis):
            return None
        if self.slot_tag is None:
            return f"on a Redis Cluster the input stream must carry its tenant's hash tag: {self.stream!r}"
        return self.settings.cluster_stream_problem() if self.settings.cluster_mode else None

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
                if not self._backoff.sleep(attempt):
                    return 0

    def _close_handler(self) -> None:
        try:
            self.handler.close()
        except Exception:
            self.log.exception("Handler %s failed to close cleanly", self.stage)

    def _ensure_group(self) -> None:
        if ensure_group(self.redis, self.stream, self.group):
            self.log.info("Created consumer group %s on %s", self.group, self.stream)

    # ------------------------------------------------------------------ loop
    def _next_entries(self) -> tuple[list[RawEntry], bool]:
        """Reclaiming and reading new entries take turns at going first, new entries first.

        Always reclaiming first would let one entry that crashes the process hold the stream
        back: each restarted consumer would reclaim it (idle again by then) before reading
        anything new, for MAX_DELIVERIES restarts. Reading first on every start makes each
        restart move the stream on by a batch; taking turns afterwards keeps a busy stream
        from starving the reclaim of dead consumers' entries.

        Returns the entries, and whether they are new (a batch that may be filled up).
        """
        reclaim_first, self._reclaim_first = self._reclaim_first, not self._reclaim_first
        if reclaim_first:
            entries = self._reader.reclaim()
            if entries or self._stop.is_set():
                return entries, False
            return self._reader.read_new(), True
        entries = self._reader.read_new()
        return (entries, True) if entries else (self._reader.reclaim(), False)

    def _iteration(self) -> bool:
        """Reclaim or read one batch and handle it; False when Redis failed before a batch was read."""
        metrics.heartbeat()
        try:
            entries, new = self._next_entries()
            self._outages.recovered()
        except REDIS_OUTAGE as exc:
            self._outages.failed(exc)
            self._outages.wait()
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
                self._handle(entries, new)
            except Exception:  # a bug here must not kill the worker; the entries stay pending
                self.log.exception("Unexpected error handling %d entries; left pending", len(entries))
        self._trimmer.after_iteration(busy=bool(entries))
        return True

    def _handle(self, entries: list[RawEntry], new: bool) -> None:
        messages = self._decoded(entries)
        if new and messages:
            messages = self._filled(messages)
        if messages:
            self._process(messages)

    def _decoded(self, entries: list[RawEntry]) -> list[StreamMessage]:
        """The entries that decode; the others are dead-lettered."""
        messages: list[StreamMessage] = []
        for entry in entries:
            try:
                message = decode_entry(entry, self.stream, self.handler.required_fields)
                self._check_slot(message)
                messages.append(message)
            except PermanentError as error:
                self._delivery.dead_letter(*entry, error)
            except Exception:  # a bug in decoding: that entry crashed, its batch-mates go on
                self.log.exception(
                    "Message %s crashed the %s decoder (delivery %d); left pending for redelivery",
                    entry[0],
                    self.stage,
                    entry[2],
                )
        return messages

    def _check_slot(self, message: StreamMessage) -> None:
        """On a cluster, a message of another tenant than its stream's cannot be worked: its
        outputs, counters and dedup keys would be in another slot than the ack's MULTI."""
        tenant = message.tenant_id
        if self.slot_tag is not None and isinstance(tenant, str) and tenant != self.slot_tag:
            raise PermanentError(
                "tenant_stream_mismatch",
                f"tenant_id {tenant!r} does not match the tenant of stream {self.stream} "
                f"({self.slot_tag!r}): on a Redis Cluster each tenant has its own streams",
                fields=("tenant_id",),
            )

    def _filled(self, messages: list[StreamMessage]) -> list[StreamMessage]:
        """``messages`` and what arrives within the handler's fill wait, until the batch is full."""
        handler = self.handler
        if not isinstance(handler, FillsBatches) or handler.fill_wait_ms <= 0:
            return messages
        deadline = time.monotonic() + handler.fill_wait_ms / 1000.0
        while len(messages) < self.batch_size and not handler.batch_is_full(messages):
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms < 1 or self._stop.is_set():
                break
            try:
                more = self._reader.read_new(count=self.batch_size - len(messages), block_ms=left_ms)
            except (redis.RedisError, OSError):
                break  # process what is in hand; the next read meets the outage
            if not more:
                break
            messages += self._decoded(more)
        return messages

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
                        self._delivery.ack(message, result, started)
                    elif isinstance(result, PermanentError):
                        self._delivery.dead_letter(
                            message.id, message.fields, message.delivery_count, result, message.payload
                        )
                    elif isinstance(result, BaseException) and is_transient(result):
                        retry.append(message)
                        error = error or result
                    else:
                        self._delivery.crashed(message, result)
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

        Their idle time is reset at least every CLAIM_IDLE_MS / 2, so no other consumer
        reclaims them: enough reclaims during a long outage would dead-letter a message
        for being transient.
        """
        remaining = self._backoff.delay(attempt)
        step = self.settings.claim_idle_ms / 2000.0
        while True:
            metrics.heartbeat()  # waiting out a backoff is not a stall
            self._reader.hold([message.id for message in messages])
            if remaining <= 0:
                return True
            if self._stop.wait(min(step, remaining)):
                return False
            remaining -= step
