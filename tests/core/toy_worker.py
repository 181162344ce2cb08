"""A toy stage handler run by the worker tests as a real subprocess.

It records what it sees in Redis so tests can count effects:
- ``toy:batches`` (LIST): one JSON list of entry ids per process_batch call
- ``toy:attempts`` (HASH): entry id → how many times the handler saw it
- ``toy:deliveries`` (HASH): entry id → delivery count of its latest delivery
and publishes one entry per processed message to ``<input stream>:out`` — the
effect that must exist exactly once per message.

Behaviour per message (payload field ``action``): ``ok`` (default), ``crash``
(raises RuntimeError, every delivery), ``die`` (the whole process exits at once, every
delivery, as a native crash would), ``transient`` (raises TransientError for the
whole batch the first ``fail_times`` attempts), ``transient_until_gate`` (the same
until the key ``toy:gate`` exists), ``transient_result`` (returns a
TransientError for that message only). ``slow: true`` messages sleep TOY_SLEEP_S
when TOY_HONOR_SLOW=1; without TOY_HONOR_SLOW every batch sleeps TOY_SLEEP_S.
TOY_INPUT=final reads the last pipeline stream instead of the ingest stream; TOY_INPUT_STREAM
names any stream to read (chain toys: the second reads the first's ``:out``). A ``blob``
field of the payload is carried into the output, like the crops a real stage passes on.
TOY_FILL_WAIT_MS and TOY_FULL_AT make it a FillsBatches handler: the loop waits up to
TOY_FILL_WAIT_MS for a batch of TOY_FULL_AT messages.
"""

from __future__ import annotations

import json
import os
import time

import redis

from facepipe.core.errors import PermanentError, TransientError
from facepipe.core.messages import IngestMessage, parse_message
from facepipe.core.settings import Settings
from facepipe.core.worker import Outcome, Publish, StreamMessage, run_worker_cli


class ToyHandler:
    name = "toy"
    required_fields = ("image_sha256", "bucket", "key", "tenant_id")

    def __init__(self, settings: Settings) -> None:
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        final = os.environ.get("TOY_INPUT") == "final"
        self.input_stream = os.environ.get("TOY_INPUT_STREAM") or (
            settings.pipeline_streams[-1] if final else settings.ingest_stream
        )
        self.output_stream = f"{self.input_stream}:out"
        self.sleep_s = float(os.environ.get("TOY_SLEEP_S", "0"))
        self.honor_slow = os.environ.get("TOY_HONOR_SLOW") == "1"
        self.fill_wait_ms = int(os.environ.get("TOY_FILL_WAIT_MS", "0"))
        self.full_at = int(os.environ.get("TOY_FULL_AT", "1"))

    def batch_is_full(self, messages: list[StreamMessage]) -> bool:
        return len(messages) >= self.full_at

    def setup(self) -> None:
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()

    def _attempt(self, message: StreamMessage) -> int:
        self.redis.hset("toy:deliveries", message.id, message.delivery_count)
        return int(self.redis.hincrby("toy:attempts", message.id, 1))

    def process_batch(self, messages: list[StreamMessage]) -> list[Outcome | BaseException]:
        self.redis.rpush("toy:batches", json.dumps([message.id for message in messages]))
        attempts = {message.id: self._attempt(message) for message in messages}
        slow = any(message.payload.get("slow") for message in messages)
        if self.sleep_s and (slow or not self.honor_slow):
            time.sleep(self.sleep_s)
        for message in messages:
            action = message.payload.get("action", "ok")
            if action == "crash":
                raise RuntimeError(f"toy crash on {message.id}")
            if action == "die":
                os._exit(3)
            if action == "transient" and attempts[message.id] <= int(message.payload.get("fail_times", 0)):
                raise TransientError(f"toy transient failure on {message.id}")
            if action == "transient_until_gate" and not self.redis.exists("toy:gate"):
                raise TransientError(f"toy transient failure on {message.id} until toy:gate is set")
        results: list[Outcome | BaseException] = []
        for message in messages:
            fail_times = int(message.payload.get("fail_times", 0))
            if message.payload.get("action") == "transient_result" and attempts[message.id] <= fail_times:
                results.append(TransientError(f"toy transient result on {message.id}"))
                continue
            try:
                parse_message(IngestMessage, message.payload)
            except PermanentError as error:
                results.append(error)
                continue
            results.append(
                Outcome(
                    publish=[Publish(self.output_stream, self._output(message))],
                    summary={"faces_total": 2, "accepted": 1, "rejected": 1, "dup_skipped": 0},
                    counters={"faces_processed": 1, "faces_rejected": 1},
                )
            )
        return results


    def _output(self, message: StreamMessage) -> dict:
        # Everything a next toy stage needs to pass the message on (it checks the ingest fields).
        keep = ("image_sha256", "bucket", "key", "tenant_id", "blob")
        return {"source": message.id, "n": message.payload["n"]} | {
            name: message.payload[name] for name in keep if name in message.payload
        }


if __name__ == "__main__":
    raise SystemExit(run_worker_cli(ToyHandler, prog="toy_worker"))
