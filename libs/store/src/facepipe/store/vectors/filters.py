"""The one filter language of the vector index: "these payload keys equal these values".

Every read and delete the pipeline makes is a conjunction of keyword equalities, always
starting with the tenant (``tenant_id = T [and site = S] [and image_sha256 = I]``). The spec
is kept that small on purpose: each backend translates it one to one into its own filter
type (qdrant-client's ``models.Filter`` for a server, ``qdrant_edge.Filter`` for the
embedded store), so both answer the same question, and the payload indexes on exactly
these keys (:data:`KEYWORD_INDEXES`) serve every filter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from facepipe.core.tenancy import validate_tenant_id

# Payload fields with a keyword index, in both backends. tenant_id is the tenant key
# (Qdrant groups each tenant's points by it); the others serve site filters, deletion of
# one image, and the pHash prefix a later near-duplicate lookup may use.
TENANT_KEY = "tenant_id"
KEYWORD_INDEXES = (TENANT_KEY, "site", "phash_prefix", "image_sha256")

MatchValue = str | int | bool


class UnsupportedFilterError(ValueError):
    """A filter outside the spec (another condition kind, or a key without an index)."""


@dataclass(frozen=True)
class PointFilter:
    """Points whose payload has every ``key = value`` of ``matches`` (an empty one matches all)."""

    matches: tuple[tuple[str, MatchValue], ...]

    def __post_init__(self) -> None:
        keys = [key for key, _ in self.matches]
        if len(set(keys)) != len(keys):
            raise UnsupportedFilterError(f"a key may appear once in a filter, got {keys}")
        for key, value in self.matches:
            if key not in KEYWORD_INDEXES:
                # Filtering on a key without an index would walk every point of the store.
                raise UnsupportedFilterError(
                    f"filter key {key!r} has no payload index; indexed keys: {', '.join(KEYWORD_INDEXES)}"
                )
            if not isinstance(value, MatchValue):
                raise UnsupportedFilterError(
                    f"filter value of {key!r} must be str, int or bool, got {value!r}"
                )

    @classmethod
    def of_tenant(cls, tenant_id: str, **more: MatchValue | None) -> PointFilter:
        """One tenant's points, narrowed by ``more`` (``None`` values are left out)."""
        tenant = validate_tenant_id(tenant_id)
        return cls(((TENANT_KEY, tenant), *((k, v) for k, v in more.items() if v is not None)))

    @classmethod
    def from_mapping(cls, matches: Mapping[str, MatchValue]) -> PointFilter:
        return cls(tuple(matches.items()))

    @property
    def tenant(self) -> str | None:
        return dict(self.matches).get(TENANT_KEY)  # type: ignore[return-value]
