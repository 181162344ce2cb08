"""Scenario 4: thousands of hostile messages (hypothesis) into every stage's input stream.

Malformed JSON, wrong types, missing and extra fields, huge strings, path-traversal keys,
unknown buckets, files that are not images, truncated JPEGs, decompression bombs, 1x1 and
20,000x20,000 headers, hostile crops and embeddings. Every entry must end acked or in the
DLQ with a reason it may have (a crash shows as ``max_deliveries_exceeded`` and fails);
no worker may die; peak memory is reported and bounded.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hostile import (
    CROP_REASONS,
    EMBEDDING_REASONS,
    HOSTILE_BUCKETS,
    HOSTILE_TENANTS,
    IMAGE_REASONS,
    RUNTIME_REASONS,
    TRAVERSAL_KEYS,
    Hostile,
    crop_corpus,
    encode,
    image_corpus,
    mutated,
    raw_garbage,
)
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from reliability_images import GeneratedImage
from reliabilitykit import Stack, peak_rss_mib, record, scaled

from facepipe.store.storage import ObjectStore

pytestmark = pytest.mark.reliability

PEAK_RSS_LIMIT_MIB = 1500  # per worker process; the models alone take ~300 MiB


@pytest.mark.timeout(2400)
def test_hostile_messages_end_acked_or_dead_lettered(stack: Stack, image_set: list[GeneratedImage]) -> None:
    total = scaled(10_000, 1_000)
    # Finished entries kept: the first image's detected and embedded entries are the templates below.
    stack.overrides.update(
        {
            "CLAIM_IDLE_MS": "4000",
            "MAX_DELIVERIES": "2",
            "WORKER_BATCH_SIZE": "16",
            "STREAM_RETENTION_MS": "3600000",
        }
    )
    workers = stack.spawn_pipeline()
    settings = stack.settings
    store = ObjectStore(settings)
    raw_bucket = settings.bucket_raw

    # One real image through the real pipeline gives the templates of the later stages' messages.
    photo = next(img for img in image_set if img.name == "original:obama_1")
    stack.publish([photo])
    stack.wait_drained(timeout=300, expected_ingest=1)
    client = stack.redis()
    base_detected = json.loads(client.xrange(settings.detected_stream)[0][1]["message"])
    base_embedded = json.loads(client.xrange(settings.embedded_stream)[0][1]["message"])
    base_ingest = json.loads(client.xrange(settings.ingest_stream)[0][1]["message"])
    crop_b64 = base_detected["faces"][0]["crop_jpeg_b64"]

    files = image_corpus(photo.data)
    for name, (data, _allowed) in files.items():
        store.put_bytes(raw_bucket, f"hostile/{name}", data)
    crops = crop_corpus(base64.b64decode(crop_b64))

    any_reason = RUNTIME_REASONS | IMAGE_REASONS | CROP_REASONS | EMBEDDING_REASONS | {"acked"}

    def ingest_of(key: str, bucket: str = raw_bucket, **extra: object) -> dict:
        return {**base_ingest, "bucket": bucket, "key": key, **extra}

    file_messages = st.builds(
        lambda name, tenant: Hostile(
            f"file:{name}",
            {"message": encode(ingest_of(f"hostile/{name}", tenant_id=tenant))},
            files[name][1],
        ),
        st.sampled_from(sorted(files)),
        st.sampled_from(["t-a", "t-b", "t-c"]),
    )
    key_messages = st.builds(
        lambda key: Hostile(
            "ingest:hostile-key",
            {"message": encode(ingest_of(key))},
            frozenset({"invalid_fields", "object_not_found"}),
        ),
        st.one_of(st.sampled_from(TRAVERSAL_KEYS), st.text(min_size=1, max_size=60)),
    )
    bucket_messages = st.builds(
        lambda bucket: Hostile(
            "ingest:unknown-bucket",
            {"message": encode(ingest_of("hostile/photo", bucket))},
            frozenset(
                {"invalid_fields", "object_not_found", "missing_fields", "not_an_image", "corrupt_image"}
            ),
        ),
        st.one_of(
            st.sampled_from(HOSTILE_BUCKETS),
            st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True),
        ),
    )
    tenant_messages = st.builds(
        lambda tenant: Hostile(
            "ingest:hostile-tenant",
            {"message": encode(ingest_of("hostile/photo", tenant_id=tenant))},
            frozenset({"invalid_fields", "missing_fields", "invalid_tenant_id"}),
        ),
        st.sampled_from(HOSTILE_TENANTS),
    )
    hint_messages = st.builds(
        lambda hints: Hostile(
            "ingest:face-hints",
            {"message": encode(ingest_of("hostile/photo", face_hints=hints))},
            frozenset({"acked", "invalid_fields", "missing_fields"}),
        ),
        st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"bbox": st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=6)}
                ),
                max_size=6,
            ),
            st.lists(
                st.fixed_dictionaries(
                    {
                        "bbox": st.lists(st.integers(-5000, 5000), min_size=4, max_size=4),
                        "confidence": st.floats(-1, 2),
                    }
                ),
                max_size=6,
            ),
            st.just([{"bbox": [0, 0, 10, 10]}] * 5000),
            st.just([{"bbox": [-1e308, -1e308, 1e308, 1e308]}]),
        ),
    )
    random_object = st.builds(lambda data: data, st.binary(min_size=0, max_size=2000))
    ingest_messages = st.one_of(
        st.builds(lambda f: Hostile("raw", f, frozenset({"invalid_json", "missing_payload"})), raw_garbage),
        st.builds(
            lambda d: Hostile("ingest:mutated", {"message": encode(d)}, any_reason),
            mutated(ingest_of("hostile/photo")),
        ),
        file_messages,
        file_messages,
        key_messages,
        bucket_messages,
        tenant_messages,
        hint_messages,
        st.builds(lambda data: ("upload", data), random_object),
    )

    def non_finite(base: dict) -> st.SearchStrategy[Hostile]:
        """NaN and Infinity where the schema has free-form values (found by hypothesis at full size)."""
        docs = [
            {**base, "model": {**base["model"], "extra": float("nan")}},
            {**base, "model": {**base["model"], "nested": {"x": [float("inf")]}}},
            {**base, "timings_ms": {**base["timings_ms"], "decode": float("-inf")}},
        ]
        return st.sampled_from(
            [Hostile("non-finite", {"message": encode(doc)}, frozenset({"invalid_fields"})) for doc in docs]
        )

    def crop_messages(base: dict) -> st.SearchStrategy[Hostile]:
        return st.builds(
            lambda name: Hostile(
                f"crop:{name}", {"message": encode(_with_crop(base, crops[name][0]))}, crops[name][1]
            ),
            st.sampled_from(sorted(crops)),
        )

    embedding_messages = st.builds(
        lambda value: Hostile(
            "embedding",
            {"message": encode(_with_embedding(base_embedded, value))},
            EMBEDDING_REASONS | {"invalid_fields", "missing_fields"},
        ),
        st.one_of(st.text(max_size=30), st.sampled_from(_embeddings())),
    )
    detected_messages = st.one_of(
        st.builds(lambda f: Hostile("raw", f, frozenset({"invalid_json", "missing_payload"})), raw_garbage),
        st.builds(
            lambda d: Hostile("detected:mutated", {"message": encode(d)}, any_reason), mutated(base_detected)
        ),
    )
    embedded_messages = st.builds(
        lambda d: Hostile("embedded:mutated", {"message": encode(d)}, any_reason), mutated(base_embedded)
    )

    streams = {
        "ingest": settings.ingest_stream,
        "detected": settings.detected_stream,
        "embedded": settings.embedded_stream,
    }
    published: dict[tuple[str, str], Hostile] = {}
    uploads = Counter()

    def publish(stage: str, item: Hostile | tuple[str, bytes]) -> None:
        if isinstance(item, tuple):  # random bytes: upload as an object, then ingest it
            uploads["n"] += 1
            key = f"hostile/random-{uploads['n']}"
            store.put_bytes(raw_bucket, key, item[1])
            item = Hostile(
                "file:random-bytes",
                {"message": encode(ingest_of(key))},
                frozenset({"not_an_image", "corrupt_image", "unsupported_image_format", "acked"}),
            )
        entry_id = client.xadd(streams[stage], item.fields)
        published[(streams[stage], str(entry_id))] = item

    @seed(20261128)
    @hypothesis_settings(
        max_examples=total,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        st.one_of(
            st.tuples(st.just("ingest"), ingest_messages),
            st.tuples(st.just("ingest"), ingest_messages),
            st.tuples(st.just("ingest"), ingest_messages),
            st.tuples(
                st.just("detected"),
                st.one_of(detected_messages, crop_messages(base_detected), non_finite(base_detected)),
            ),
            st.tuples(
                st.just("embedded"),
                st.one_of(
                    embedded_messages,
                    crop_messages(base_embedded),
                    embedding_messages,
                    non_finite(base_embedded),
                ),
            ),
        )
    )
    def produce(pair: tuple[str, Hostile]) -> None:
        stage, item = pair
        publish(stage, item)

    started = time.monotonic()
    produce()
    expected_ingest = stack.added(settings.ingest_stream)
    stack.wait_drained(timeout=1500, expected_ingest=expected_ingest)
    elapsed = time.monotonic() - started

    dead = [kind for kind, service in workers.items() if not service.alive()]
    rss = {kind: round(peak_rss_mib(service.pid)) for kind, service in workers.items() if service.alive()}
    outcomes: dict[tuple[str, str], str] = {}
    for stream in streams.values():
        for _id, entry in client.xrange(f"{stream}:dlq"):
            outcomes[(stream, entry["source_id"])] = entry["reason"]
    wrong: list[str] = []
    reasons = Counter()
    for key, item in published.items():
        outcome = outcomes.get(key, "acked")
        reasons[outcome] += 1
        if outcome not in item.allowed:
            wrong.append(
                f"{item.category} {key[0].rsplit(':', 1)[-1]} {key[1]}: {outcome}, "
                f"allowed {sorted(item.allowed)}: {str(item.fields)[:300]}"
            )
    depths = stack.depths()
    ok = not dead and not wrong and all(rss_mib < PEAK_RSS_LIMIT_MIB for rss_mib in rss.values())
    dlq_count = sum(1 for key in published if key in outcomes)
    record(
        "4. hostile input (hypothesis)",
        ok,
        messages=len(published),
        DLQ=dlq_count,
        lost=sum(d["pending"] + d["lag"] for d in depths.values()),  # neither acked nor dead-lettered
        duplicates=0,
        leaks=0,
        notes=f"{len(published) - dlq_count} acked; {len(wrong)} wrong outcomes; reasons "
        f"{dict(reasons.most_common(8))}; peak RSS MiB {rss}; workers died: {len(dead)}; "
        f"{elapsed:.0f} s",
    )
    Path(stack.root / "hostile-wrong.txt").write_text("\n".join(wrong))
    assert not dead, f"workers died: {dead}\n{stack.log_tails()}"
    assert not wrong, f"{len(wrong)} messages with a wrong outcome, e.g.:\n" + "\n".join(wrong[:25])
    assert all(d["pending"] == 0 and d["lag"] == 0 for d in depths.values()), depths
    assert len(published) >= total * 0.95
    assert all(rss_mib < PEAK_RSS_LIMIT_MIB for rss_mib in rss.values()), rss


def _with_crop(base: dict, crop_b64: str) -> dict:
    doc = json.loads(json.dumps(base))
    doc["faces"][0]["crop_jpeg_b64"] = crop_b64
    return doc


def _with_embedding(base: dict, value: str) -> dict:
    doc = json.loads(json.dumps(base))
    doc["faces"][0]["embedding_b64"] = value
    return doc


def _embeddings() -> list[str]:
    def b64(array: np.ndarray) -> str:
        return base64.b64encode(np.asarray(array, dtype="<f4").tobytes()).decode("ascii")

    unit = np.zeros(512, np.float32)
    unit[0] = 1
    return [
        b64(np.zeros(512)),
        b64(np.full(512, np.nan)),
        b64(np.full(512, np.inf)),
        b64(unit * 3),
        b64(unit[:511]),
        b64(np.ones(128) / np.sqrt(128)),
        b64(np.ones(513) / np.sqrt(513)),
        "AAAA",
        "====",
        "",
        base64.b64encode(b"\x00" * 2047).decode(),
        b64(np.ones(512 * 1000) / np.sqrt(512 * 1000)),
    ]
