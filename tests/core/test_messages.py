"""Message schemas and tenant ids: what is accepted, and the PermanentError for what is not."""

from __future__ import annotations

import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facepipe.core.errors import PermanentError
from facepipe.core.messages import DetectedMessage, EmbeddedMessage, IngestMessage, parse_message
from facepipe.core.tenancy import validate_tenant_id

RUNBOOK_EXAMPLE = {
    "image_sha256": "abc123def456",
    "bucket": "raw-images",
    "key": "demo/test_image.jpg",
    "tenant_id": "demo",
    "site": "local",
    "url": "http://example.com/test.jpg",
    "image_phash": "8f373c9c3c9c3c1e",
    "face_hints": None,
}


def _ingest(**changes: Any) -> dict[str, Any]:
    return {**RUNBOOK_EXAMPLE, **changes}


def _face(index: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "index": index,
        "bbox": [10, 20, 110, 140],
        "landmarks": [[30, 50], [80, 50], [55, 80], [35, 110], [75, 110]],
        "det_score": 0.91,
        "quality": {"blur_var": 120.5, "pose_ratio": 1.1, "size": 100},
        "phash": "8f373c9c3c9c3c1e",
        "crop_jpeg_b64": "/9j/4AAQ",
        **extra,
    }


def test_runbook_examples_parse() -> None:
    message = parse_message(IngestMessage, RUNBOOK_EXAMPLE)
    assert (message.image_sha256, message.tenant_id, message.face_hints) == ("abc123def456", "demo", None)
    hinted = parse_message(
        IngestMessage,
        _ingest(
            image_sha256="a" * 64,
            key="demo/celebrity.jpg",
            face_hints=[{"bbox": [100, 150, 200, 250], "confidence": 0.98}],
        ),
    )
    assert hinted.face_hints is not None and hinted.face_hints[0].bbox == [100, 150, 200, 250]
    # The Phase 3 batch example: placeholder pHash of 17 characters for i=10; only four fields required.
    minimal = parse_message(
        IngestMessage,
        {
            "image_sha256": "test10",
            "bucket": "raw-images",
            "key": "demo/test10.jpg",
            "tenant_id": "demo",
            "image_phash": "000000000000000" + "10",
        },
    )
    assert (minimal.site, minimal.url) == ("", "")


def test_missing_fields_are_listed() -> None:
    with pytest.raises(PermanentError) as caught:
        parse_message(IngestMessage, {"image_sha256": "x1", "tenant_id": "demo"})
    assert caught.value.reason == "missing_fields"
    assert caught.value.fields == ("bucket", "key")
    assert "bucket, key" in caught.value.message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"image_sha256": "abc/def"}, "image_sha256"),
        ({"image_sha256": "abc:def"}, "image_sha256"),
        ({"image_sha256": "..abc"}, "image_sha256"),
        ({"image_sha256": ""}, "image_sha256"),
        ({"key": "/etc/passwd"}, "key"),
        ({"key": "../other-tenant/x.jpg"}, "key"),
        ({"key": "demo/../../x.jpg"}, "key"),
        ({"tenant_id": "a:b"}, "tenant_id"),
        ({"tenant_id": "../x"}, "tenant_id"),
        ({"tenant_id": "*"}, "tenant_id"),
        ({"bucket": "Raw_Images"}, "bucket"),
        ({"face_hints": [{"bbox": [1, 2, 3]}]}, "face_hints.0.bbox"),
        ({"face_hints": [{"bbox": [1, 2, 3, 4], "confidence": 1.5}]}, "face_hints.0.confidence"),
        ({"image_sha256": 123}, "image_sha256"),
    ],
)
def test_invalid_fields_are_permanent_and_named(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(PermanentError) as caught:
        parse_message(IngestMessage, _ingest(**changes))
    assert caught.value.reason == "invalid_fields"
    assert field in caught.value.fields
    assert field in caught.value.message


def test_key_may_contain_dots_that_are_not_a_parent_segment() -> None:
    assert parse_message(IngestMessage, _ingest(key="demo/a..b/x.v2.jpg")).key == "demo/a..b/x.v2.jpg"


def test_detected_and_embedded_messages_round_trip() -> None:
    detected = {
        "v": 1,
        "ingest": RUNBOOK_EXAMPLE,
        "image": {"width": 640, "height": 480},
        "model": {"pack": "buffalo_sc", "detector": "scrfd_500m_bnkps"},
        "faces": [_face(0)],
        "rejected": [{"index": 1, "reason": "blur"}],
        "timings_ms": {"download": 3.5, "decode": 1.0, "detection": 20.0},
    }
    parsed = parse_message(DetectedMessage, detected)
    assert parse_message(DetectedMessage, parsed.model_dump(mode="json")) == parsed
    embedded = {
        **detected,
        "model": {**detected["model"], "recognizer": "w600k_mbf", "dim": 512},
        "faces": [_face(0, embedding_b64="AAAA")],
    }
    parsed_embedded = parse_message(EmbeddedMessage, embedded)
    assert parsed_embedded.faces[0].embedding_b64 == "AAAA"
    assert parsed_embedded.model.dim == 512
    # A detected message is not an embedded one: nested missing fields are named with their path.
    with pytest.raises(PermanentError) as caught:
        parse_message(EmbeddedMessage, detected)
    assert caught.value.reason == "missing_fields"
    assert set(caught.value.fields) == {"model.recognizer", "model.dim", "faces.0.embedding_b64"}
    with pytest.raises(PermanentError) as caught:
        parse_message(DetectedMessage, {**detected, "v": 2})
    assert caught.value.reason == "invalid_fields" and caught.value.fields == ("v",)
    with pytest.raises(PermanentError) as caught:
        parse_message(DetectedMessage, {**detected, "ingest": _ingest(tenant_id="a/b")})
    assert caught.value.fields == ("ingest.tenant_id",)


@pytest.mark.parametrize("tenant", ["demo", "Acme-1", "a", "t_1.prod", "9" * 63])
def test_valid_tenant_ids(tenant: str) -> None:
    assert validate_tenant_id(tenant) == tenant


@pytest.mark.parametrize(
    "tenant", ["", "a:b", "../x", "*", "a/b", "a..b", "-a", ".a", "a" * 64, "a\n", None, 7]
)
def test_invalid_tenant_ids(tenant: object) -> None:
    with pytest.raises(PermanentError) as caught:
        validate_tenant_id(tenant)
    assert caught.value.reason == "invalid_tenant_id"


@given(st.text(alphabet=string.printable + "é/:*", max_size=80))
def test_an_accepted_tenant_id_can_never_escape_a_prefix(tenant: str) -> None:
    try:
        validate_tenant_id(tenant)
    except PermanentError:
        return
    assert 1 <= len(tenant) <= 63
    assert not set(tenant) & set(":/*?[]\\ \n\t{}") and ".." not in tenant
