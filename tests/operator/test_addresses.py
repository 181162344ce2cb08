"""The operator reaches a pipeline's backing services by the names its pods use."""

from __future__ import annotations

import pytest

from facepipe.operator.addresses import qualify_endpoint, qualify_host, qualify_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://redis:6379/0", "redis://redis.demo.svc:6379/0"),
        ("redis://:secret@redis:6379/0", "redis://:secret@redis.demo.svc:6379/0"),
        ("redis://redis.other:6379/0", "redis://redis.other:6379/0"),
        ("redis://10.0.0.7:6379/0", "redis://10.0.0.7:6379/0"),
        ("redis+cluster://r0:6379,r1:6379", "redis+cluster://r0.demo.svc:6379,r1.demo.svc:6379"),
        ("http://qdrant:6333", "http://qdrant.demo.svc:6333"),
        ("http://localhost:6333", "http://localhost:6333"),
        ("embedded", "embedded"),
    ],
)
def test_short_names_resolve_in_the_pipelines_namespace(url: str, expected: str) -> None:
    assert qualify_url(url, "demo") == expected


def test_endpoints_and_hosts() -> None:
    assert qualify_endpoint("minio:9000", "demo") == "minio.demo.svc:9000"
    assert qualify_endpoint("minio.acme:9000", "demo") == "minio.acme:9000"
    assert qualify_host("::1", "demo") == "::1"
    assert qualify_host("s3.example.com", "demo") == "s3.example.com"
