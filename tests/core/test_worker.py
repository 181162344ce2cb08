"""The worker loop (facepipe.core.worker) end to end: a toy stage as a real subprocess on real Redis."""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import redis

from facepipe.cli.localservers import start_redis
from facepipe.core.stats import Stats

INGEST = "face-processing-queue"
OUT = f"{INGEST}:out"  # where the toy worker publishes
DLQ = f"{INGEST}:dlq"
GROUP = "pipeline"

STARTUP_LINES = [
    "Starting Redis Streams worker...",
    "Consumer: toy-1",
    f"Stream: {INGEST}",
    f"Group: {GROUP}",
    "Batch size: 10",
    "Worker started, waiting for messages...",
]
DLQ_FIELDS = {
    "reason",
    "error_class",
    "error",
    "source_stream",
    "source_id",
    "delivery_count",
    "consumer",
    "failed_at",
    "payload",
}


def _success_line(entry_id: str) -> str:
    return f"Successfully processed message {entry_id}: faces_total=2, accepted=1, rejected=1, dup_skipped=0"


def test_once_on_empty_stream_creates_group_logs_startup_and_exits_zero(harness) -> None:
    result = harness.run("--once")
    assert result.returncode == 0, result.stderr
    positions = [result.stderr.find(line) for line in STARTUP_LINES]
    assert all(pos >= 0 for pos in positions), result.stderr
    assert positions == sorted(positions), "start-up lines out of order"
    assert [g["name"] for g in harness.redis.xinfo_groups(INGEST)] == [GROUP]
    # The group is created idempotently: a second run finds it (BUSYGROUP) and still works.
    assert harness.run("--once").returncode == 0


def test_batch_size_from_flag_then_from_setting(harness) -> None:
    ids = [harness.publish(harness.ingest_payload(n)) for n in range(7)]
    first = harness.run("--once", "--max-batch", "3")
    assert first.returncode == 0, first.stderr
    assert harness.batches() == [ids[:3]]
    second = harness.run("--once", WORKER_BATCH_SIZE="2")
    assert second.returncode == 0, second.stderr
    assert "Batch size: 2" in second.stderr
    assert harness.batches() == [ids[:3], ids[3:5]]
    assert harness.out_sources() == ids[:5]
    assert harness.pending() == 0
    assert harness.redis.xinfo_groups(INGEST)[0]["last-delivered-id"] == ids[4]


def test_message_field_and_legacy_data_field(harness) -> None:
    preferred = harness.publish(harness.ingest_payload(1), field_name="message")
    legacy = harness.publish(harness.ingest_payload(2), field_name="data")
    result = harness.run("--once")
    assert result.returncode == 0, result.stderr
    assert harness.out_sources() == [preferred, legacy]
    assert _success_line(preferred) in result.stderr
    assert _success_line(legacy) in result.stderr
    assert harness.pending() == 0


def test_bad_messages_go_to_the_dlq_with_reason_and_the_worker_keeps_going(harness) -> None:
    bytes_client = redis.Redis.from_url(harness.env["REDIS_URL"])
    missing = harness.ingest_payload(2)
    del missing["bucket"], missing["key"]
    bad = {
        harness.publish('{"invalid":"json'): ("invalid_json", "JSONDecodeError", '{"invalid":"json'),
        harness.publish(missing): ("missing_fields", "PermanentError", json.dumps(missing)),
        harness.publish({"x": 1}, field_name="other"): (
            "missing_payload",
            "PermanentError",
            json.dumps({"other": json.dumps({"x": 1})}),
        ),
        harness.publish("[1, 2]"): ("invalid_json", "PermanentError", "[1, 2]"),
        harness.publish(harness.ingest_payload(5, tenant_id="a:b")): (
            "invalid_fields",
            "PermanentError",
            json.dumps(harness.ingest_payload(5, tenant_id="a:b")),
        ),
    }
    not_utf8 = b'{"image_sha256": "\xff\xfe"}'
    bad_bytes_id = bytes_client.xadd(INGEST, {"message": not_utf8}).decode()
    good = harness.publish(harness.ingest_payload(7))

    result = harness.run("--once")
    assert result.returncode == 0, result.stderr

    # Read with a bytes client: one DLQ payload is deliberately not UTF-8.
    entries = [
        (entry_id, {k.decode(): v for k, v in fields.items()})
        for entry_id, fields in bytes_client.xrange(DLQ)
    ]
    assert len(entries) == len(bad) + 1
    raw_dlq = {fields["source_id"].decode(): fields["payload"] for _id, fields in entries}
    by_source = {
        fields["source_id"].decode(): {k: v.decode(errors="replace") for k, v in fields.items()}
        for _id, fields in entries
    }
    for source_id, (reason, error_class, raw) in bad.items():
        fields = by_source[source_id]
        assert set(fields) == DLQ_FIELDS
        assert (fields["reason"], fields["error_class"], fields["payload"]) == (reason, error_class, raw)
        assert fields["source_stream"] == INGEST
        assert fields["delivery_count"] == "1"
        assert fields["consumer"] == "toy-1"
        assert datetime.fromisoformat(fields["failed_at"]).tzinfo is not None
        assert fields["error"]
    missing_id = next(i for i, v in bad.items() if v[0] == "missing_fields")
    assert "bucket, key" in by_source[missing_id]["error"]
    assert f"Message {missing_id} missing required fields: bucket, key" in result.stderr
    assert "tenant_id" in by_source[next(i for i, v in bad.items() if v[0] == "invalid_fields")]["error"]
    # A payload that is not UTF-8 is kept byte for byte.
    assert by_source[bad_bytes_id]["reason"] == "invalid_json"
    assert raw_dlq[bad_bytes_id] == not_utf8

    assert harness.out_sources() == [good]
    assert harness.pending() == 0
    stats = Stats(harness.redis)
    assert stats.snapshot()["counters"]["worker_msgs_dlq"] == len(bad) + 1
    # Only the missing-fields message is attributable to tenant "demo" (the others have no valid tenant).
    assert stats.snapshot("demo")["counters"]["worker_msgs_dlq"] == 1


def test_raw_entries_of_any_bytes_are_dead_lettered_with_their_reason_on_the_first_delivery(harness) -> None:
    """Field values and names that are not UTF-8, or that json.loads(bytes) would take for UTF-16
    or UTF-32 (a NUL first or second), never crash a delivery: each entry is dead-lettered with
    its reason at once, and a valid batch-mate is processed in the same batch."""
    bytes_client = redis.Redis.from_url(harness.env["REDIS_URL"])
    raw_entries: list[tuple[dict[bytes, bytes], str]] = [
        # Found at full size by the hostile-input scenario: ended max_deliveries_exceeded.
        ({b"data": "\x00\xf7\x8cTt!\x01".encode()}, "invalid_json"),
        ({b"message": b"\x00\x00\x00{"}, "invalid_json"),  # utf-32-be to json's guess
        ({b"message": b'{\x00"a": 1}'}, "invalid_json"),  # utf-16-le to json's guess
        ({b"message": b"\x00\xff\xfe\x80"}, "invalid_json"),  # not UTF-8
        ({b"data": b"\xc3\x28"}, "invalid_json"),  # not UTF-8 either
        ({b"message": b"[" * 100_000}, "invalid_json"),  # deeper than the parser recurses
        (  # a lone surrogate, which no output could carry on
            {b"message": json.dumps(harness.ingest_payload(1, key="demo/\ud800.jpg")).encode()},
            "invalid_json",
        ),
        ({b"\xff\xfe": b"x"}, "missing_payload"),  # a field name that is not UTF-8
        ({b"message\xff": b"{}", b"\x00": b"\x00"}, "missing_payload"),
    ]
    expected = {
        bytes_client.xadd(INGEST, fields).decode(): (reason, fields) for fields, reason in raw_entries
    }
    good = harness.publish(harness.ingest_payload(7))

    result = harness.run("--once", "--max-batch", "16")
    assert result.returncode == 0, result.stderr
    assert "crashed" not in result.stderr and "Unexpected error" not in result.stderr, result.stderr

    dead = {fields[b"source_id"].decode(): fields for _id, fields in bytes_client.xrange(DLQ)}
    assert set(dead) == set(expected)
    for entry_id, (reason, fields) in expected.items():
        entry = dead[entry_id]
        assert (entry[b"reason"].decode(), entry[b"delivery_count"]) == (reason, b"1"), (fields, entry)
        payload = next((fields[name] for name in (b"message", b"data") if name in fields), None)
        if payload is not None:  # kept byte for byte
            assert entry[b"payload"] == payload
    # Without a payload field: the fields as JSON, names byte for byte.
    nameless = next(i for i, (_reason, fields) in expected.items() if b"\xff\xfe" in fields)
    assert dead[nameless][b"payload"] == b'{"\xff\xfe": "x"}'
    assert harness.out_sources() == [good]
    assert harness.pending() == 0


def test_kill_9_holding_unacked_entries_another_consumer_reclaims_them_exactly_once(harness) -> None:
    fast = [harness.publish(harness.ingest_payload(n)) for n in (1, 2)]
    slow = [harness.publish(harness.ingest_payload(n, slow=True)) for n in (3, 4)]
    unread = [harness.publish(harness.ingest_payload(n)) for n in (5, 6)]
    first = harness.start(
        WORKER_BATCH_SIZE="2", TOY_SLEEP_S="120", TOY_HONOR_SLOW="1", REDIS_CONSUMER_NAME="a"
    )
    harness.wait_until(lambda: len(harness.batches()) == 2, what="worker a to hold the slow batch")
    first.kill()
    assert harness.out_sources() == fast
    pending = harness.redis.xpending_range(INGEST, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(i, "a") for i in slow]

    second = harness.start(WORKER_BATCH_SIZE="2", CLAIM_IDLE_MS="500", REDIS_CONSUMER_NAME="b")
    harness.wait_until(lambda: len(harness.out_sources()) == 6, what="all six messages published once")
    assert second.terminate() == 0
    assert Counter(harness.out_sources()) == Counter(fast + slow + unread)
    assert all(count == 1 for count in Counter(harness.out_sources()).values())
    assert harness.pending() == 0
    deliveries = harness.redis.hgetall("toy:deliveries")
    assert [deliveries[i] for i in slow] == ["2", "2"]
    assert [deliveries[i] for i in fast + unread] == ["1"] * 4
    # Both slow entries were reclaimed (together or one at a time, depending on timing).
    reclaimed = re.findall(r"Reclaimed (\d+) message\(s\)", second.log())
    assert sum(int(n) for n in reclaimed) == 2


def test_message_failing_every_delivery_is_dead_lettered_and_does_not_block_others(harness) -> None:
    before = harness.publish(harness.ingest_payload(1))
    poison = harness.publish(harness.ingest_payload(2, action="crash"))
    after = harness.publish(harness.ingest_payload(3))
    worker = harness.start(MAX_DELIVERIES="2", CLAIM_IDLE_MS="300")
    harness.wait_until(lambda: harness.redis.xlen(DLQ) == 1, what="the poison message in the DLQ")
    assert worker.terminate() == 0

    ((dlq_id, entry),) = harness.redis.xrange(DLQ)
    assert entry["reason"] == "max_deliveries_exceeded"
    assert entry["source_id"] == poison
    assert entry["delivery_count"] == "3"  # the third delivery is dead-lettered, not processed
    assert json.loads(entry["payload"]) == harness.ingest_payload(2, action="crash")
    assert harness.redis.hget("toy:deliveries", poison) == "2"
    # The good messages of the crashed batch were published once, before the poison pill died.
    assert harness.out_sources() == [before, after]
    assert all(out_id < dlq_id for out_id, _ in harness.redis.xrange(OUT))
    assert harness.pending() == 0
    log = worker.log()
    assert "RuntimeError: toy crash on" in log and "Traceback" in log
    assert "left pending for redelivery" in log


def test_transient_error_raised_for_the_batch_is_retried_not_dead_lettered(harness) -> None:
    flaky = harness.publish(harness.ingest_payload(1, action="transient", fail_times=3))
    neighbour = harness.publish(harness.ingest_payload(2))
    result = harness.run("--once")
    assert result.returncode == 0, result.stderr
    assert harness.redis.hget("toy:attempts", flaky) == "4"
    assert sorted(harness.out_sources()) == sorted([flaky, neighbour])
    assert harness.redis.xlen(DLQ) == 0
    assert harness.pending() == 0
    assert result.stderr.count("Transient error on 2 message(s)") == 3


def test_entries_retried_for_a_transient_error_are_not_reclaimed_by_others(harness) -> None:
    # MAX_DELIVERIES=1: a single reclaim by the second consumer would dead-letter the message.
    settings = {"CLAIM_IDLE_MS": "300", "MAX_DELIVERIES": "1"}
    flaky = harness.publish(harness.ingest_payload(1, action="transient_until_gate"))
    holder = harness.start(
        "--once", REDIS_CONSUMER_NAME="a", RETRY_BACKOFF_INITIAL_S="1", RETRY_BACKOFF_MAX_S="1", **settings
    )
    harness.wait_until(lambda: harness.redis.hget("toy:attempts", flaky), what="worker a to hold the message")
    other = harness.start(REDIS_CONSUMER_NAME="b", **settings)
    harness.wait_until(lambda: "Worker started" in other.log(), what="worker b to start")
    time.sleep(1.5)  # several of b's reclaim rounds, each longer than CLAIM_IDLE_MS after a's failure
    harness.redis.set("toy:gate", "open")
    assert holder.proc.wait(timeout=60) == 0
    assert other.terminate() == 0
    assert harness.redis.xlen(DLQ) == 0
    assert harness.out_sources() == [flaky]
    assert harness.redis.hget("toy:deliveries", flaky) == "1"
    assert "Reclaimed" not in other.log()


def test_transient_error_returned_for_one_message_retries_only_that_one(harness) -> None:
    flaky = harness.publish(harness.ingest_payload(1, action="transient_result", fail_times=2))
    neighbour = harness.publish(harness.ingest_payload(2))
    result = harness.run("--once")
    assert result.returncode == 0, result.stderr
    assert harness.redis.hget("toy:attempts", flaky) == "3"
    assert harness.redis.hget("toy:attempts", neighbour) == "1"
    assert harness.out_sources() == [neighbour, flaky]
    assert harness.redis.xlen(DLQ) == 0
    assert harness.pending() == 0


def test_sigterm_during_a_batch_finishes_acks_and_exits_zero(harness) -> None:
    ids = [harness.publish(harness.ingest_payload(n)) for n in range(5)]
    worker = harness.start(WORKER_BATCH_SIZE="3", TOY_SLEEP_S="2")
    harness.wait_until(lambda: harness.batches(), what="the first batch in the handler")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0
    assert harness.out_sources() == ids[:3]
    assert harness.pending() == 0
    assert harness.batches() == [ids[:3]]  # stopped reading: the last two were never delivered
    assert harness.redis.xinfo_groups(INGEST)[0]["last-delivered-id"] == ids[2]
    assert "SIGTERM received" in worker.log()


def test_disabled_worker_says_why_and_exits_zero(harness) -> None:
    harness.publish(harness.ingest_payload(1))
    result = harness.run(ENABLE_QUEUE_WORKER="false")
    assert result.returncode == 0
    assert "ENABLE_QUEUE_WORKER=false" in result.stderr
    assert harness.redis.xinfo_stream(INGEST)["groups"] == 0


def test_invalid_max_batch_flag_is_rejected(harness) -> None:
    result = harness.run("--once", "--max-batch", "0")
    assert result.returncode == 2
    assert "--max-batch" in result.stderr and "1..1000" in result.stderr


def test_final_stage_counts_completed_messages_in_stats(harness) -> None:
    final_stream = f"{INGEST}:embedded"
    ids = [harness.publish(harness.ingest_payload(n), stream=final_stream) for n in (1, 2)]
    harness.publish(harness.ingest_payload(3))  # an ingest-stage ack is not a completed message
    assert harness.run("--once", TOY_INPUT="final").returncode == 0
    assert harness.run("--once").returncode == 0
    final_out = harness.redis.xrange(f"{final_stream}:out")
    assert [json.loads(fields["message"])["source"] for _id, fields in final_out] == ids
    snapshot = Stats(harness.redis).snapshot()
    assert snapshot["counters"]["worker_msgs_acked"] == 2
    assert snapshot["counters"]["faces_processed"] == 3  # counters from every stage's Outcome
    assert Stats(harness.redis).snapshot("demo")["counters"]["worker_msgs_acked"] == 2


def test_worker_survives_a_redis_outage(harness, tmp_path: Path) -> None:
    server = start_redis(tmp_path / "redis-a")
    port = server.port
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        worker = harness.start(REDIS_URL=url, CLAIM_IDLE_MS="500")
        first = client.xadd(INGEST, {"message": json.dumps(harness.ingest_payload(1))})
        harness.wait_until(lambda: client.exists(OUT) and client.xlen(OUT) == 1, what="the first message")
        server.stop()
        harness.wait_until(lambda: "Redis unavailable" in worker.log(), what="the outage to be logged")
        time.sleep(1.0)  # a few retries while Redis is down
        server = start_redis(tmp_path / "redis-b", port=port)  # empty: stream and group are gone
        second = client.xadd(INGEST, {"message": json.dumps(harness.ingest_payload(2))})
        harness.wait_until(
            lambda: client.exists(OUT) and client.xlen(OUT) == 1, what="the message after the outage"
        )
        assert json.loads(client.xrange(OUT)[0][1]["message"])["source"] == second != first
        assert worker.terminate() == 0
        log = worker.log()
        assert log.count("Redis unavailable") == 1, log
        assert "Redis connection restored" in log
        assert re.search(r"Consumer group pipeline on \S+ is gone", log)
    finally:
        client.close()
        server.stop()


def _deliver_to_a_dead_consumer(harness, entry_id: str, times: int) -> None:
    """Make ``entry_id`` pending at consumer "dead", delivered ``times`` times."""
    harness.redis.xgroup_create(INGEST, GROUP, id="0", mkstream=True)
    harness.redis.xreadgroup(GROUP, "dead", {INGEST: ">"}, count=1)
    for _ in range(times - 1):
        harness.redis.xclaim(INGEST, GROUP, "dead", min_idle_time=0, message_ids=[entry_id])


def _idle_for(harness, entry_ids: list[str], ms: int) -> None:
    def idle() -> bool:
        rows = harness.redis.xpending_range(INGEST, GROUP, "-", "+", 100, idle=ms)
        return {row["message_id"] for row in rows} >= set(entry_ids)

    harness.wait_until(idle, what=f"{entry_ids} idle for {ms} ms")


def test_a_started_consumer_reads_new_entries_before_reclaiming(harness) -> None:
    pill = harness.publish(harness.ingest_payload(1, action="crash"))
    _deliver_to_a_dead_consumer(harness, pill, times=1)
    new = [harness.publish(harness.ingest_payload(n)) for n in (2, 3)]
    _idle_for(harness, [pill], 100)
    result = harness.run("--once", CLAIM_IDLE_MS="100")
    assert result.returncode == 0, result.stderr
    assert harness.batches() == [new]  # the idle pill waits for the next turn, not the other way
    assert harness.out_sources() == new


def test_of_the_idle_entries_the_one_delivered_fewest_times_is_reclaimed_first(harness) -> None:
    pill = harness.publish(harness.ingest_payload(1, action="crash"))
    mate = harness.publish(harness.ingest_payload(2))
    _deliver_to_a_dead_consumer(harness, pill, times=3)
    harness.redis.xreadgroup(GROUP, "dead", {INGEST: ">"}, count=1)  # the mate: delivered once
    _idle_for(harness, [pill, mate], 100)
    result = harness.run("--once", CLAIM_IDLE_MS="100", MAX_DELIVERIES="10")
    assert result.returncode == 0, result.stderr
    assert harness.batches() == [[mate]]  # older, but delivered more often: the pill goes after it
    assert harness.redis.hget("toy:deliveries", mate) == "2"


def test_a_pill_that_kills_its_consumer_does_not_hold_back_the_entries_behind_it(harness) -> None:
    first = harness.publish(harness.ingest_payload(1))
    pill = harness.publish(harness.ingest_payload(2, action="die"))
    behind = [harness.publish(harness.ingest_payload(n)) for n in range(3, 9)]
    settings = {"WORKER_BATCH_SIZE": "2", "CLAIM_IDLE_MS": "100", "MAX_DELIVERIES": "3"}
    restarts = 0
    # What Kubernetes does with a crashed container: start it again, until the pill is dead-lettered.
    while harness.redis.xlen(DLQ) == 0:
        assert restarts < 30, f"the pill was not dead-lettered after {restarts} restarts"
        worker = harness.start(**settings)
        harness.wait_until(lambda w=worker: w.proc.poll() is not None or harness.redis.xlen(DLQ), 120,
                           what="the consumer to die on the pill, or the pill in the DLQ")
        worker.terminate()
        restarts += 1
    harness.wait_until(lambda: len(harness.out_sources()) == 1 + len(behind), what="every good entry out")
    ((dlq_id, entry),) = harness.redis.xrange(DLQ)
    assert (entry["source_id"], entry["reason"]) == (pill, "max_deliveries_exceeded")
    outs = {json.loads(fields["message"])["source"]: out_id for out_id, fields in harness.redis.xrange(OUT)}
    assert set(outs) == {first, *behind}
    # Every restart moved the stream on: all of them came out before the pill was given up on.
    assert all(outs[source] < dlq_id for source in behind), (outs, dlq_id)


def test_a_stage_that_fills_batches_waits_for_more_entries_up_to_its_wait(harness) -> None:
    fill = {"TOY_FILL_WAIT_MS": "60000", "TOY_FULL_AT": "3"}
    first = harness.publish(harness.ingest_payload(1))
    worker = harness.start(**fill)
    harness.wait_until(
        lambda: "Worker started" in worker.log() and harness.pending() == 1,
        what="the first entry read, the batch not yet full",
    )
    later = [harness.publish(harness.ingest_payload(n)) for n in (2, 3)]
    harness.wait_until(lambda: len(harness.out_sources()) == 3, what="the three entries out")
    assert harness.batches() == [[first, *later]]  # one batch, filled by entries that came later
    assert worker.terminate() == 0


def test_a_batch_that_does_not_fill_up_goes_through_when_the_wait_ends(harness) -> None:
    lone = harness.publish(harness.ingest_payload(1))
    worker = harness.start(TOY_FILL_WAIT_MS="300", TOY_FULL_AT="3")
    harness.wait_until(lambda: harness.out_sources() == [lone], what="the lone entry, after at most 300 ms")
    assert harness.batches() == [[lone]]
    assert worker.terminate() == 0


def test_a_fill_wait_of_zero_never_holds_an_entry_back(harness) -> None:
    worker = harness.start(TOY_FILL_WAIT_MS="0", TOY_FULL_AT="3")
    harness.wait_until(lambda: "Worker started" in worker.log(), what="the worker")
    first = harness.publish(harness.ingest_payload(1))
    harness.wait_until(lambda: harness.batches(), what="the first entry handed to the stage")
    second = harness.publish(harness.ingest_payload(2))
    harness.wait_until(lambda: len(harness.out_sources()) == 2, what="both entries out")
    assert harness.batches() == [[first], [second]]
    assert worker.terminate() == 0
