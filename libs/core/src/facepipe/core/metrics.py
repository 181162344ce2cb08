"""Every Prometheus metric of the pipeline (docs/design.md "Prometheus metric names").

The objects live in prometheus-client's default registry, so each process exposes
all of them; series appear once a label set is first used. Workers serve them with
:func:`start_metrics_server` on ``METRICS_PORT`` (0 = off); ops-api mounts its own
``/metrics`` and sets the stream gauges.

Workers serve their probes there too (:class:`WorkerHealth`: ``/healthz``, ``/readyz``).

Who updates what: the worker runtime owns the ``facepipe_worker_*`` and
``facepipe_message_duration_seconds`` series; :class:`facepipe.core.stats.Stats`
mirrors the face counters and stage timings it writes to Redis; ops-api owns the
stream, DLQ, readiness and dedup gauges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

# `_created` series double every counter and histogram for nothing a dashboard uses.
prometheus_client.disable_created_metrics()

# Seconds, from a millisecond-scale detection on a small image up to minutes for a
# stuck upload; the same buckets for whole messages.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

WORKER_MSGS_ACKED = Counter(
    "facepipe_worker_msgs_acked", "Stream entries acked after their output was published", ["stage"]
)
WORKER_MSGS_DLQ = Counter(
    "facepipe_worker_msgs_dlq", "Stream entries moved to <stream>:dlq", ["stage", "reason"]
)
# The same events without the open-ended reason: exported at 0 from the start, so rate() and
# increase() (the HighDLQRate alert) see a first burst of a reason never seen before.
WORKER_DEAD_LETTERS = Counter(
    "facepipe_worker_dead_letters", "Stream entries moved to <stream>:dlq, whatever the reason", ["stage"]
)
WORKER_TRANSIENT_ERRORS = Counter(
    "facepipe_worker_transient_errors", "Batches retried in-process after a transient error", ["stage"]
)
WORKER_REDELIVERIES = Counter(
    "facepipe_worker_redeliveries", "Pending entries reclaimed from an idle or dead consumer", ["stage"]
)
FACES_PROCESSED = Counter("facepipe_faces_processed", "Faces successfully processed", ["stage"])
FACES_REJECTED = Counter("facepipe_faces_rejected", "Faces rejected by quality checks", ["reason"])
FACES_DUP_SKIPPED = Counter("facepipe_faces_dup_skipped", "Faces skipped as near-duplicates")
STAGE_DURATION = Histogram(
    "facepipe_stage_duration_seconds",
    "Time spent in one step (detection, embedding, storage, upsert)",
    ["stage"],
    buckets=DURATION_BUCKETS,
)
MESSAGE_DURATION = Histogram(
    "facepipe_message_duration_seconds",
    "Time from a batch reaching the handler to its entries being acked",
    ["stage"],
    buckets=DURATION_BUCKETS,
)
EMBED_BATCH_SIZE = Histogram(
    "facepipe_embed_batch_size", "Faces per embedding inference call", buckets=BATCH_SIZE_BUCKETS
)
WORKER_INFLIGHT = Gauge("facepipe_worker_inflight_messages", "Messages in the handler right now", ["stage"])
# stream_role (ingest, detected, embedded: Settings.streams_by_role) names the stream's place in
# the pipeline whatever the stream is called; autoscalers and alerts select on it.
STREAM_LENGTH = Gauge("facepipe_stream_length", "XLEN of a pipeline stream", ["stream", "stream_role"])
STREAM_LAG = Gauge(
    "facepipe_stream_lag", "Entries not yet delivered to the group", ["stream", "stream_role", "group"]
)
STREAM_PENDING = Gauge(
    "facepipe_stream_pending", "Entries delivered but not acked", ["stream", "stream_role", "group"]
)
STREAM_CONSUMERS = Gauge(
    "facepipe_stream_consumers", "Consumers known to the group", ["stream", "stream_role", "group"]
)
DLQ_LENGTH = Gauge("facepipe_dlq_length", "XLEN of <stream>:dlq", ["stream", "stream_role"])
READY = Gauge("facepipe_ready", "1 when a readiness check passes, else 0", ["check"])
DEDUP_KEYS = Gauge("facepipe_dedup_keys", "Keys under dedup:")
DEDUP_MEMORY_BYTES = Gauge("facepipe_dedup_memory_bytes", "Memory used by the keys under dedup:")


# The worker's probes, served beside /metrics (the operator points the kubelet at them).
HEALTH_PATH = "/healthz"  # liveness: the loop keeps coming round
READY_PATH = "/readyz"  # readiness (and startup): set up, and the loop keeps coming round


class WorkerHealth:
    """The worker loop's heartbeat, as the kubelet's probes see it.

    The loop beats once per pass (a pass blocks at most READ_BLOCK_MS on Redis, a backoff
    wait beats too), so a loop that has not beaten for ``stall_s`` is stuck: /healthz then
    answers 503 and the kubelet restarts the container. Until the handler is set up
    (models loaded) /readyz answers 503 and /healthz 200: the startup probe waits.
    """

    def __init__(self, stall_s: float = 300.0) -> None:
        self.stall_s = stall_s
        self.ready = False
        self.last_beat = time.monotonic()

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def mark_ready(self) -> None:
        self.beat()
        self.ready = True

    def liveness(self) -> tuple[int, str]:
        if not self.ready:
            return 200, "starting"
        age = time.monotonic() - self.last_beat
        if age < self.stall_s:
            return 200, f"ok: the loop came round {age:.1f} s ago"
        return 503, f"stalled: no pass of the loop for {age:.0f} s (WORKER_STALL_SECONDS={self.stall_s:g})"

    def readiness(self) -> tuple[int, str]:
        return self.liveness() if self.ready else (503, "starting: setting up the handler (models, buckets)")


WORKER_HEALTH = WorkerHealth()


def heartbeat() -> None:
    """The worker loop is alive (called once per pass and while waiting out a backoff)."""
    WORKER_HEALTH.beat()


def start_stage_series(stage: str) -> None:
    """Export the stage's counters at 0 before its first message.

    A counter series that first appears at 1 loses that increment to rate() and increase(), so an
    alert on a stage's first dead letters or a dashboard's first minute would read too low. DLQ
    reasons are open-ended: each reason's series starts at its first dead letter, which is why alerts
    count dead letters with WORKER_DEAD_LETTERS.
    """
    for counter in (
        WORKER_MSGS_ACKED,
        WORKER_DEAD_LETTERS,
        WORKER_TRANSIENT_ERRORS,
        WORKER_REDELIVERIES,
        FACES_PROCESSED,
    ):
        counter.labels(stage=stage)
    WORKER_INFLIGHT.labels(stage=stage).set(0)


def mark_ready() -> None:
    """The handler is set up and the loop starts: /readyz answers 200 from now on."""
    WORKER_HEALTH.mark_ready()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: no log lines
        pass


def _with_probes(metrics_app: Any) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in (HEALTH_PATH, READY_PATH):
            return list(metrics_app(environ, start_response))
        code, text = WORKER_HEALTH.liveness() if path == HEALTH_PATH else WORKER_HEALTH.readiness()
        reason = "OK" if code == 200 else "Service Unavailable"
        start_response(f"{code} {reason}", [("Content-Type", "text/plain")])
        return [text.encode() + b"\n"]

    return app


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", stall_seconds: float | None = None
) -> object | None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` in a daemon thread; ``0`` means off."""
    if port == 0:
        return None
    if stall_seconds is not None:
        WORKER_HEALTH.stall_s = stall_seconds
    try:
        app = _with_probes(prometheus_client.make_wsgi_app())
        server = make_server(addr, port, app, _Server, _QuietHandler)
    except OSError as exc:
        raise RuntimeError(f"METRICS_PORT={port}: cannot listen on {addr}:{port}: {exc}") from None
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    return server


class TimingSink(Protocol):
    def record_timing(self, name: str, ms: float, count: int = 1, tenant: str | None = None) -> None: ...


@contextmanager
def timed(stats: TimingSink | None, name: str, count: int = 1, tenant: str | None = None) -> Iterator[None]:
    """Time the block and record it as stage ``name`` (``detection``, ``embedding``, ``storage``, ``upsert``).

    With a :class:`~facepipe.core.stats.Stats` the timing goes to Redis (the Phase 3
    ``/stats`` ``timings_ms``) and to ``facepipe_stage_duration_seconds``; with ``None``
    only to the histogram. ``count`` is how many items the block handled (faces in
    an embedding batch), so ``/stats`` averages per item. Nothing is recorded when
    the block raises: a failed upload is not a storage timing.
    """
    started = time.perf_counter()
    yield
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if stats is None:
        STAGE_DURATION.labels(stage=name).observe(elapsed_ms / 1000.0)
    else:
        stats.record_timing(name, elapsed_ms, count=count, tenant=tenant)
