"""The handler contract: what a stage is handed, what it returns, and how a stream entry decodes."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from facepipe.core.errors import PermanentError
from facepipe.core.tenancy import is_valid_tenant_id

PAYLOAD_FIELDS = ("message", "data")  # preferred, legacy
# A \uD800-\uDFFF escape: half of a pair, or a lone surrogate (checked after parsing).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

RawEntry = tuple[str, dict[str, str], int]  # (entry id, fields, delivery count)


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
        return raw_payload(self.fields)

    @property
    def tenant_id(self) -> str | None:
        return tenant_of(self.payload)


@dataclass
class Publish:
    """An output entry, XADDed (as JSON in field ``message``) in the same MULTI as the source XACK."""

    stream: str
    payload: dict[str, Any] | BaseModel
    maxlen: int | None = None  # approximate MAXLEN trim of the output stream; None = never trim


@dataclass
class Outcome:
    """What a handler did with one message.

    ``summary`` is logged (faces_total, accepted, rejected, dup_skipped; ``accepted`` is also
    this stage's ``facepipe_faces_processed_total``); ``counters`` are runbook stats counters
    (``faces_processed``, ``faces_rejected``, ``faces_dup_skipped``) added in the same MULTI as
    the ack, globally and for the message's tenant: a number, or a number per reason (the
    Prometheus ``reason`` label), e.g. ``{"faces_rejected": {"blurry": 2}}``. A handler never
    writes a counter itself: only an ack moves one, so a redelivery never counts twice.
    """

    publish: list[Publish] = field(default_factory=list)
    summary: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int | dict[str, int]] = field(default_factory=dict)

    def counter_writes(self) -> list[tuple[str, int, str | None]]:
        """``(counter, n, reason)`` for every non-zero count."""
        writes: list[tuple[str, int, str | None]] = []
        for counter, value in self.counters.items():
            split = value if isinstance(value, dict) else {None: value}
            writes += [(counter, int(n), reason) for reason, n in split.items() if n]
        return writes


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


@runtime_checkable
class FillsBatches(Protocol):
    """What a :class:`StageHandler` adds to have the loop wait a little for a fuller batch.

    When a read brings entries and ``batch_is_full`` says no, the loop reads again (blocking
    at most what is left of ``fill_wait_ms``) until it is full, the batch size is reached or the
    time is up; 0 never waits. Entries it reclaims are never held back to fill up.
    """

    fill_wait_ms: int

    def batch_is_full(self, messages: list[StreamMessage]) -> bool: ...


def decode_entry(entry: RawEntry, stream: str, required_fields: Sequence[str]) -> StreamMessage:
    """The entry's JSON payload as a message; PermanentError when it cannot be one."""
    entry_id, fields, delivery_count = entry
    field_name = next((name for name in PAYLOAD_FIELDS if name in fields), None)
    if field_name is None:
        raise PermanentError(
            "missing_payload",
            f"entry has no 'message' (or legacy 'data') field; fields: {sorted(fields)}",
        )
    raw = fields[field_name]
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:  # undecodable bytes survived as surrogates
        raise PermanentError("invalid_json", f"payload is not UTF-8: {exc}") from exc
    try:
        # Parsed as the text it is. json.loads(bytes) would guess the encoding from the first
        # bytes: a payload starting with a NUL (or with a NUL second) is taken for UTF-16 or
        # UTF-32 and raises UnicodeDecodeError, a crash redelivered until MAX_DELIVERIES.
        # A UTF-8 byte order mark, which that guess skipped, is still skipped.
        payload = json.loads(raw.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise PermanentError("invalid_json", f"payload is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # nested deeper than the parser's recursion limit
        raise PermanentError("invalid_json", "payload is nested too deeply to parse") from exc
    if _SURROGATE_ESCAPE.search(raw):
        try:  # JSON escapes can spell a lone surrogate, which no UTF-8 output can carry on
            json.dumps(payload, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PermanentError("invalid_json", f"payload holds a lone surrogate escape: {exc}") from exc
    if not isinstance(payload, dict):
        kind = type(payload).__name__
        raise PermanentError("invalid_json", f"payload must be a JSON object, got {kind}")
    missing = tuple(name for name in required_fields if payload.get(name) in (None, ""))
    if missing:
        raise PermanentError(
            "missing_fields", f"missing required fields: {', '.join(missing)}", fields=missing
        )
    return StreamMessage(entry_id, stream, payload, fields, delivery_count)


def raw_payload(fields: dict[str, str]) -> str:
    """The payload text as published (all fields as JSON when neither payload field is there)."""
    for name in PAYLOAD_FIELDS:
        if name in fields:
            return fields[name]
    return json.dumps(fields, ensure_ascii=False)


def tenant_of(payload: Any) -> str | None:
    """The message's tenant (ingest: ``tenant_id``; later stages: ``ingest.tenant_id``) when valid."""
    if not isinstance(payload, dict):
        return None
    tenant = payload.get("tenant_id")
    if tenant is None and isinstance(payload.get("ingest"), dict):
        tenant = payload["ingest"].get("tenant_id")
    return tenant if is_valid_tenant_id(tenant) else None
