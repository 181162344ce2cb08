"""Who a remembered face belongs to (:class:`Owner`), and the answer for one face (:class:`DedupResult`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from facepipe.core.messages import IMAGE_ID_PATTERN

_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)
_EVENT_ID = re.compile(r"[0-9A-Za-z_.-]{0,64}")


class Owner(NamedTuple):
    """Who a remembered face belongs to (the tenant is the key's scope).

    ``event`` names the ingest event that brought the image in (stable across redeliveries of
    that event, new when the same image is ingested again). A face is never a duplicate of an
    entry with the same owner, event included: a redelivery indexes its faces again, while a
    second run of the same image is skipped as the runbook expects.
    """

    image_sha256: str
    face_index: int
    event: str = ""

    @property
    def token(self) -> str:
        return f"{self.image_sha256}:{self.face_index}:{self.event}"

    @property
    def face_token(self) -> str:
        """The token's prefix common to every event of this face."""
        return f"{self.image_sha256}:{self.face_index}:"

    def same_message(self, other: Owner) -> bool:
        """Whether ``other`` is a face of the same image brought by the same ingest event: the
        faces of one message, indexed together (or not at all)."""
        return (self.image_sha256, self.event) == (other.image_sha256, other.event)

    @classmethod
    def parse(cls, token: str) -> Owner:
        sha, index, event = [*token.split(":", 2), ""][:3]
        return cls(sha, int(index), event)

    def checked(self) -> Owner:
        """This owner with ``face_index`` as an int, or ValueError when it cannot be in a key."""
        sha = self.image_sha256
        if not isinstance(sha, str) or not _IMAGE_ID.fullmatch(sha):
            raise ValueError(f"image_sha256 {sha!r} cannot be used in a dedup key")
        if int(self.face_index) < 0:
            raise ValueError(f"face_index must be >= 0, got {self.face_index}")
        if not isinstance(self.event, str) or not _EVENT_ID.fullmatch(self.event):
            raise ValueError(f"event {self.event!r} must be up to 64 characters of A-Z a-z 0-9 _ . -")
        return Owner(sha, int(self.face_index), self.event)


# One face to check: its pHash (16 hex characters) and its owner.
Face = tuple[str, Owner]


@dataclass(frozen=True)
class DedupResult:
    """Outcome for one face: a duplicate of ``matched_owner`` (whose hash is ``matched_phash``).

    ``pending``: not decided yet. The face is within the threshold only of faces another owner
    has claimed and not yet confirmed (they are being indexed; see ``check_and_claim_batch``).
    It is neither skipped nor remembered; ``matched_owner`` is the nearest claimant.
    """

    is_duplicate: bool
    matched_owner: Owner | None = None
    matched_phash: str | None = None
    distance: int | None = None
    pending: bool = False


NOT_DUPLICATE = DedupResult(False)

# An owner entry's value is the owner's token; a claim (a face being indexed) carries this mark.
CLAIM_MARK = "?"


def owner_value(token: str) -> tuple[str, bool]:
    """An owner entry's value as (owner token, whether it is only a claim)."""
    if token.startswith(CLAIM_MARK):
        return token[len(CLAIM_MARK) :], True
    return token, False
