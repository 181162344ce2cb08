"""Stream names by role, and the per-tenant ingest stream every installer derives the same way."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from facepipe.core.errors import PermanentError
from facepipe.core.settings import Settings, dlq_stream
from facepipe.core.tenancy import tenant_stream_name


def test_roles_follow_custom_stream_names() -> None:
    settings = Settings.model_validate(
        {"REDIS_STREAM_NAME": "in", "DETECTED_STREAM_NAME": "faces-found", "EMBEDDED_STREAM_NAME": "vecs"}
    )
    assert settings.streams_by_role == {"ingest": "in", "detected": "faces-found", "embedded": "vecs"}
    derived = Settings.model_validate({"REDIS_STREAM_NAME": "in"})
    assert derived.streams_by_role == {"ingest": "in", "detected": "in:detected", "embedded": "in:embedded"}
    assert list(derived.streams_by_role.values()) == derived.pipeline_streams


def test_tenant_stream_is_the_runbook_stream_with_the_tenant_as_hash_tag() -> None:
    assert tenant_stream_name("acme") == "face-processing-queue:{acme}"
    assert tenant_stream_name("Globex.eu-1", base="ingest") == "ingest:{Globex.eu-1}"
    assert tenant_stream_name("acme") != tenant_stream_name("acme2")


def test_a_tenants_streams_and_dlqs_share_one_redis_cluster_slot() -> None:
    """The hash tag survives the derived names, so a MULTI over them stays in one slot."""
    settings = Settings.model_validate({"REDIS_STREAM_NAME": tenant_stream_name("acme")})
    names = settings.pipeline_streams + [dlq_stream(s) for s in settings.pipeline_streams]
    assert len({key_slot(name.encode()) for name in names}) == 1
    assert key_slot(tenant_stream_name("acme").encode()) == key_slot(b"{acme}")


@pytest.mark.parametrize("tenant", ["a:b", "x}y", "../x", ""])
def test_tenant_stream_refuses_invalid_tenants(tenant: str) -> None:
    with pytest.raises(PermanentError):
        tenant_stream_name(tenant)
