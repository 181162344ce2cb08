"""The one Redis Streams worker loop every stage (detector, embedder, indexer) runs.

A stage supplies a :class:`StageHandler`; :class:`Worker` does everything else:

1. ensure the consumer group (:func:`ensure_group`: ``XGROUP CREATE <stream> <group> 0
   MKSTREAM``, BUSYGROUP is fine);
2. loop: read new entries (``XREADGROUP >`` up to the batch size; a stage that
   :class:`FillsBatches` may have it wait a little for more), or reclaim one entry idle longer
   than ``CLAIM_IDLE_MS`` from any consumer, the one delivered the fewest times (delivered more
   than ``MAX_DELIVERIES`` times → DLQ ``max_deliveries_exceeded``); the two take turns at
   going first, new entries first after a start (``reading``);
3. decode the JSON of field ``message`` (legacy ``data``), check required fields (``messages``);
4. ``handler.process_batch``; per message one MULTI: XADD every :class:`Publish`,
   the stats counters, XACK — so an entry is acked exactly when its output exists (``delivery``);
5. :class:`~facepipe.core.errors.PermanentError` → one MULTI: XADD ``<stream>:dlq`` + XACK;
   transient errors → the messages are retried in-process with exponential backoff,
   never dead-lettered; any other exception → that delivery crashed: it stays
   pending and is reclaimed after ``CLAIM_IDLE_MS`` (``loop``);
6. trim the input stream of what every consumer group finished (``XTRIM MINID``), keeping
   ``STREAM_RETENTION_MS`` (``trimming``).

SIGTERM/SIGINT: stop reading, finish the batch in hand, ack, exit 0 (a second
signal exits at once; unacked entries are reclaimed by the other consumers).
Redis going away never kills the loop: it logs once per outage and retries (``connection``).
"""

from facepipe.core.worker.cli import run_worker_cli
from facepipe.core.worker.concurrency import map_concurrently
from facepipe.core.worker.connection import ensure_group, worker_redis
from facepipe.core.worker.loop import Worker
from facepipe.core.worker.messages import FillsBatches, Outcome, Publish, StageHandler, StreamMessage

__all__ = [
    "FillsBatches",
    "Outcome",
    "Publish",
    "StageHandler",
    "StreamMessage",
    "Worker",
    "ensure_group",
    "map_concurrently",
    "run_worker_cli",
    "worker_redis",
]
