"""The indexer's dedup bookkeeping: claim a message's faces, and decide what waits for what.

The dedup entries of a face become authoritative only once the face is indexed: the indexer
claims the new faces of its messages (``check_and_claim_batch``), stores and upserts them, then
confirms the claims of the messages that made it and releases those of the messages that did
not. A face whose message fails leaves nothing behind that could hide it later; an indexer that
dies leaves claims that expire after DEDUP_CLAIM_TTL_SECONDS.

A face near a face another message has only claimed is *pending*: skipping it would lose it if
that message failed, indexing it would make a duplicate if that message succeeded. When the
other message is in the same batch, the indexer waits for it (it is indexed in an earlier round
of the batch; then this face is its duplicate). When it is not, the message is retried shortly
(:class:`ClaimPending`, a transient error), by which time the claim is confirmed or gone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from facepipe.core.errors import TransientError
from facepipe.core.worker import StreamMessage
from facepipe.store.dedup import DedupResult, Face, Message, Owner

STREAM_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")

# A message as the dedup knows it: tenant, image, ingest event.
MessageKey = tuple[str, str, str]


class ClaimPending(TransientError):
    """A face waits for another message's claim on a near face to be confirmed or released."""


def ingest_event_id(message: StreamMessage) -> str:
    """The ingest event a message belongs to: stable across its redeliveries, new for a new ingest.

    A message that carries ``source.id`` (the ingest stream entry the image came in with) is
    identified by it, so duplicates a stage published on its own redelivery, and a DLQ replay,
    count as the same event. Without it, this embedded entry's own id (stable across the
    indexer's redeliveries and retries) identifies the event.
    """
    source = message.payload.get("source")
    if isinstance(source, dict):
        source_id = source.get("id")
        if isinstance(source_id, str) and STREAM_ENTRY_ID.fullmatch(source_id):
            return source_id
    return message.id


@dataclass(eq=False)  # one message of the batch: compared by identity
class Claimed:
    """One message's faces after the claim: which it claimed, skipped, or waits with."""

    tenant: str
    faces: list[Face]  # (pHash, owner) of every face, in order
    kept: list[int] = field(default_factory=list)  # positions claimed: new faces, to index
    skipped: list[int] = field(default_factory=list)  # positions that duplicate indexed faces
    waits: dict[int, Owner] = field(default_factory=dict)  # positions pending, on whose claim

    @classmethod
    def of(cls, tenant: str, faces: list[Face], results: list[DedupResult]) -> Claimed:
        claimed = cls(tenant, faces)
        for position, result in enumerate(results):
            if result.pending and result.matched_owner is not None:
                claimed.waits[position] = result.matched_owner
            elif result.is_duplicate:
                claimed.skipped.append(position)
            else:
                claimed.kept.append(position)
        return claimed

    @property
    def key(self) -> MessageKey | None:
        if not self.faces:
            return None
        owner = self.faces[0][1]
        return (self.tenant, owner.image_sha256, owner.event)

    def waits_on(self) -> set[MessageKey]:
        return {(self.tenant, owner.image_sha256, owner.event) for owner in self.waits.values()}

    def claims(self) -> Message:
        """The faces this message claimed, for confirm() or release()."""
        return (self.tenant, [self.faces[i] for i in self.kept])

    def waited_out(self) -> None:
        """The messages its pending faces waited on were indexed: those faces duplicate theirs."""
        self.skipped = sorted([*self.skipped, *self.waits])
        self.waits = {}


def rounds(items: list[Claimed]) -> tuple[list[list[Claimed]], list[Claimed]]:
    """The order to index a batch's messages in: rounds, each waiting only on earlier ones, and
    the messages that wait on a claim from outside the batch (retried: :class:`ClaimPending`).

    A message waits on the messages (of this batch) that claimed a face near one of its own;
    its round comes after theirs. A message whose wait cannot end within the batch is left out.
    """
    in_batch = {item.key for item in items if item.key is not None}
    outside = [item for item in items if not item.waits_on() <= in_batch]
    placed: set[MessageKey] = set()
    waiting = [item for item in items if item not in outside]
    ordered: list[list[Claimed]] = []
    while waiting:
        ready = [item for item in waiting if item.waits_on() <= placed]
        if not ready:  # waits that only end outside the batch (a message that waits on itself)
            outside += waiting
            break
        ordered.append(ready)
        placed |= {item.key for item in ready if item.key is not None}
        waiting = [item for item in waiting if item not in ready]
    return ordered, outside
