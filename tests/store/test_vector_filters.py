"""The project-level filter spec and its translation into each backend's filter type."""

from __future__ import annotations

import pytest
import qdrant_edge as qe
from qdrant_client import models as qm

from facepipe.core.errors import PermanentError
from facepipe.store.vectors import KEYWORD_INDEXES, PointFilter, UnsupportedFilterError
from facepipe.store.vectors.edge import edge_filter
from facepipe.store.vectors.server import client_filter


def test_a_tenant_filter_validates_the_tenant_and_leaves_out_unset_keys() -> None:
    flt = PointFilter.of_tenant("acme", site="s1", image_sha256=None)
    assert flt.matches == (("tenant_id", "acme"), ("site", "s1"))
    assert flt.tenant == "acme"
    with pytest.raises(PermanentError, match="invalid"):
        PointFilter.of_tenant("../other")


def test_only_keys_with_a_payload_index_can_be_filtered_on() -> None:
    assert set(KEYWORD_INDEXES) == {"tenant_id", "site", "phash_prefix", "image_sha256"}
    with pytest.raises(UnsupportedFilterError, match="no payload index"):
        PointFilter.of_tenant("acme", url="https://x")
    with pytest.raises(UnsupportedFilterError, match="once"):
        PointFilter((("site", "a"), ("site", "b")))
    with pytest.raises(UnsupportedFilterError, match="str, int or bool"):
        PointFilter((("site", 1.5),))  # type: ignore[arg-type]


def test_both_backends_get_the_same_conjunction_of_equalities() -> None:
    flt = PointFilter.of_tenant("acme", site="s1", image_sha256="ab" * 32)
    server = client_filter(flt)
    assert server is not None and isinstance(server.must, list)
    assert [(c.key, c.match.value) for c in server.must if isinstance(c, qm.FieldCondition)] == list(
        flt.matches
    )
    assert all(isinstance(c.match, qm.MatchValue) for c in server.must if isinstance(c, qm.FieldCondition))
    edge = edge_filter(flt)
    assert edge is not None and edge.should is None and edge.must_not is None
    assert [(c.key, c.match.value) for c in edge.must] == list(flt.matches)
    assert all(isinstance(c.match, qe.MatchValue) for c in edge.must)
    assert client_filter(None) is None and edge_filter(None) is None
