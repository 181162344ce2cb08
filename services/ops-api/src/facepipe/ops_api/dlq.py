"""Dead-letter queues: list entries and replay them to their source stream.

A DLQ entry (written by ``facepipe.core.worker.delivery``) carries reason, error_class,
error, source_stream, source_id, delivery_count, consumer, failed_at and the
original ``payload``. Replay re-publishes the payload in field ``message`` to the
stream the DLQ belongs to and deletes the DLQ entry, atomically (one Lua
script): two operators replaying at once never publish an entry twice, and a
crash between the two steps never loses or doubles it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from facepipe.core.settings import dlq_stream

# KEYS[1] dlq, KEYS[2] source stream; ARGV[1] dlq entry id, ARGV[2] payload.
# Returns the new id in the source stream, or false when the entry was already gone.
_REPLAY_ONE = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then
  return redis.call('XADD', KEYS[2], '*', 'message', ARGV[2])
end
return false
"""

MAX_LIST = 1000


class UnknownStreamError(ValueError):
    """The stream is not one of the pipeline's streams (nor one of their DLQs)."""


@dataclass(frozen=True)
class ReplayResult:
    stream: str
    replayed: dict[str, str]  # DLQ entry id -> new id in the source stream
    missing: list[str]  # requested ids that were not (or no longer) in the DLQ


def resolve_source_stream(name: str, pipeline_streams: list[str]) -> str:
    """Accept a pipeline stream or its DLQ name; anything else is refused (no arbitrary key access)."""
    for stream in pipeline_streams:
        if name in {stream, dlq_stream(stream)}:
            return stream
    raise UnknownStreamError(
        f"unknown stream {name!r}: expected one of {', '.join(pipeline_streams)} (or the same with ':dlq')"
    )


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entry_json(stream: str, entry_id: object, fields: dict) -> dict:
    decoded = {_text(k): _text(v) for k, v in fields.items()}
    raw_payload = decoded.pop("payload", "")
    try:
        payload: object = json.loads(raw_payload)
    except (json.JSONDecodeError, TypeError):
        payload = None  # the payload itself is what was wrong (e.g. invalid_json): show it raw
    delivery = decoded.get("delivery_count", "")
    return {
        "id": _text(entry_id),
        "stream": stream,
        "dlq": dlq_stream(stream),
        "reason": decoded.pop("reason", ""),
        "error_class": decoded.pop("error_class", ""),
        "error": decoded.pop("error", ""),
        "source_stream": decoded.pop("source_stream", stream),
        "source_id": decoded.pop("source_id", ""),
        "delivery_count": int(delivery) if delivery.isdigit() else None,
        "consumer": decoded.pop("consumer", ""),
        "failed_at": decoded.pop("failed_at", ""),
        "payload": payload,
        "payload_raw": raw_payload,
        "extra": {k: v for k, v in decoded.items() if k != "delivery_count"},
    }


def list_entries(client: redis.Redis, stream: str, count: int = 100, after: str | None = None) -> list[dict]:
    """Oldest first. ``after``: an entry id; only entries strictly after it (for paging)."""
    start = f"({after}" if after else "-"
    rows = client.xrange(dlq_stream(stream), min=start, max="+", count=max(1, min(count, MAX_LIST)))
    return [_entry_json(stream, entry_id, fields) for entry_id, fields in rows]


def replay(client: redis.Redis, stream: str, ids: list[str] | None = None) -> ReplayResult:
    """Replay the given DLQ entry ids of ``stream`` (None: every entry present now)."""
    dlq = dlq_stream(stream)
    if ids is None:
        wanted = [(_text(i), f) for i, f in client.xrange(dlq, min="-", max="+")]
    else:
        wanted = []
        for entry_id in ids:
            rows = client.xrange(dlq, min=entry_id, max=entry_id)
            wanted.append((entry_id, rows[0][1] if rows else None))
    script = client.register_script(_REPLAY_ONE)
    replayed: dict[str, str] = {}
    missing: list[str] = []
    for entry_id, fields in wanted:
        if fields is None:
            missing.append(entry_id)
            continue
        payload = _text(fields.get(b"payload", fields.get("payload", "")))
        new_id = script(keys=[dlq, stream], args=[entry_id, payload])
        if new_id:
            replayed[entry_id] = _text(new_id)
        else:
            missing.append(entry_id)
    return ReplayResult(stream=stream, replayed=replayed, missing=missing)
