"""``facepipe publish-test``: the runbook's test message, with a real sample image (or, with
``--runbook-payload``, the runbook's literal example, whose image does not exist)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from facepipe.cli.commands.common import Subparsers, add_api_option
from facepipe.cli.connect import pipeline_redis, resolve
from facepipe.core.settings import Settings


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("publish-test", help="publish the runbook's test message (with a real sample image)")
    p.add_argument("--tenant", default="demo")
    p.add_argument(
        "--runbook-payload",
        action="store_true",
        help="publish the runbook's literal example (its image does not exist: it lands in the DLQ)",
    )
    add_api_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facepipe.cli.ingest import publish

    target = resolve(args.api)
    settings = target.settings
    client = pipeline_redis(target)
    if args.runbook_payload:
        payload = _runbook_payload(settings, args.tenant)
    else:
        payload = _sample_payload(settings, args.tenant)
    message_id = publish(client, settings.ingest_stream, payload)
    print(f"✅ Published test message to stream '{settings.ingest_stream}'")
    print(f"   Message ID: {message_id}")
    print("   Field: message")
    print(f"   Payload: {json.dumps(payload)}")
    return 0


def _runbook_payload(settings: Settings, tenant: str) -> dict[str, Any]:
    """The runbook's literal example: its image does not exist, so it ends in the DLQ (object_not_found)."""
    return {
        "image_sha256": "abc123def456",
        "bucket": settings.bucket_raw,
        "key": "demo/test_image.jpg",
        "tenant_id": tenant,
        "site": "local",
        "url": "http://example.com/test.jpg",
        "image_phash": "8f373c9c3c9c3c1e",
        "face_hints": None,
    }


def _sample_payload(settings: Settings, tenant: str) -> dict[str, Any]:
    """The ingest message of insightface's t1.jpg (6 faces), uploaded to the raw bucket first."""
    from facepipe.cli.ingest import build_message, raw_key
    from facepipe.cli.samples import insightface_t1
    from facepipe.store.storage import ObjectStore

    path = insightface_t1()
    data = path.read_bytes()
    store = ObjectStore(settings)
    store.ensure_buckets()
    sha, payload = build_message(settings, tenant, "local", path, data)
    payload["url"] = "http://example.com/test.jpg"
    store.put_bytes(settings.bucket_raw, raw_key(tenant, sha, path.suffix), data, "image/jpeg")
    return payload
