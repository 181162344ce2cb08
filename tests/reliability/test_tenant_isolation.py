"""Scenario 5: tenant isolation, as properties over many tenants.

1. The real pipeline ingests the same photos for tenants whose names are prefixes and
   near-twins of each other (``acme``, ``acme1``, ``acme.1``, ``acme-1``, ``Acme``...):
   every tenant gets all of its faces (one tenant's faces never dedup another's), and
   search (ops-api), per-tenant stats and dedup checks only ever see the caller's data.
2. Deletion of one image and purge of one tenant, over random layouts of many tenants
   sharing images: nothing of any other tenant is touched.
3. Tenant ids that try to escape a key or path prefix (``a:b``, ``../x``, ``*``...) are
   refused by every entry point, and every accepted id keeps its keys inside the prefix.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from reliability_images import GeneratedImage
from reliabilitykit import Stack, record, scaled, tally

from facepipe.core.errors import PermanentError
from facepipe.core.messages import IngestMessage, parse_message
from facepipe.core.stats import Stats
from facepipe.core.tenancy import is_valid_tenant_id, validate_tenant_id
from facepipe.store import deletion
from facepipe.store.dedup import DedupCache, Owner
from facepipe.store.storage import ObjectStore, artifact_keys, image_prefix, tenant_prefix
from facepipe.store.vectors import FacePoint, VectorIndex

pytestmark = pytest.mark.reliability

TWIN_TENANTS = ["acme", "acme1", "acme.1", "acme-1", "acme_1", "Acme", "acme10", "a", "a.b", "a-b"]
ESCAPES = [
    "a:b",
    "../x",
    "*",
    "a/b",
    "..",
    "",
    " ",
    "a*",
    "acme:*",
    "dedup:*",
    "stats:counters",
    "x" * 64,
    ".hidden",
    "-x",
    "a\nb",
    "a\x00b",
    "ä",
    "a..b",
    "acme/../other",
    "?",
    "[a]",
    "acme\\x",
]


def _leaks_in_search(stack: Stack, photo: GeneratedImage, tenants: list[str]) -> tuple[int, int]:
    """(hits of another tenant, hits) over a search of ``photo`` by each tenant."""
    leaks = hits = 0
    tenant_of_point = {payload["_id"]: payload.get("tenant_id") for payload in stack.points()}
    for tenant in tenants:
        response = httpx.post(
            f"http://127.0.0.1:{stack.ops_port}/search",
            timeout=60,
            files={"image": ("q.jpg", photo.data, photo.content_type)},
            data={"tenant_id": tenant, "top_k": "50"},
        )
        assert response.status_code == 200, response.text
        for face in response.json()["faces"]:
            for match in face["matches"]:
                hits += 1
                owner = match["source"]["key"].split("/", 1)[0] if match.get("source") else None
                point_tenant = tenant_of_point.get(match["point_id"])
                leaks += int(point_tenant != tenant or owner != tenant)
    return leaks, hits


@pytest.mark.timeout(1500)
def test_pipeline_search_stats_and_dedup_stay_within_each_tenant(
    stack: Stack, image_set: list[GeneratedImage]
) -> None:
    originals = [img for img in image_set if img.name.startswith("original:") and img.faces]
    tenants = TWIN_TENANTS[: scaled(10, 6)]
    images: list[GeneratedImage] = []
    for tenant in tenants:  # every tenant ingests the very same photos
        for img in originals:
            images.append(
                GeneratedImage(img.name, img.data, img.content_type, list(img.faces), img.rejected, tenant)
            )
    stack.spawn_pipeline()
    stack.spawn_ops_api()
    stack.publish(images)
    stack.wait_drained(timeout=900, expected_ingest=len(images))
    result, problems = tally(stack, images)

    # Search: each tenant searching with each photo sees its own faces only.
    search_leaks, search_hits = 0, 0
    for photo in originals[:3]:
        leaks, hits = _leaks_in_search(stack, photo, tenants)
        search_leaks += leaks
        search_hits += hits
    # Stats per tenant: exactly its own faces and messages.
    stats_wrong = []
    faces_per_tenant = Counter(img.tenant for img in images for _face in img.faces)
    for tenant in tenants:
        body = httpx.get(
            f"http://127.0.0.1:{stack.ops_port}/stats", params={"tenant_id": tenant}, timeout=30
        ).json()
        counters = body["counters"]
        if counters.get("faces_processed") != faces_per_tenant[tenant] or counters.get(
            "worker_msgs_acked"
        ) != len(originals):
            stats_wrong.append((tenant, counters))
    # Dedup: a tenant that never saw a face is never told it is a duplicate.
    dedup = DedupCache(stack.redis(), stack.settings)
    phashes = [face.phash for img in originals for face in img.faces]
    dedup_leaks = sum(dedup.lookup("never-ingested-tenant", phash).is_duplicate for phash in phashes)
    own_hits = sum(dedup.lookup(tenants[0], phash).is_duplicate for phash in phashes)

    leaks = result.leaks + search_leaks + len(stats_wrong) + dedup_leaks
    ok = not problems and leaks == 0 and result.indexed == result.expected and search_hits > 0
    record(
        "5a. tenants: pipeline, search, stats, dedup",
        ok,
        messages=len(images),
        **result.columns(leaks=leaks),
        notes=f"{len(tenants)} twin-named tenants share {len(originals)} photos; {search_hits} search hits "
        f"checked, {search_leaks} foreign; stats wrong for {len(stats_wrong)}; dedup foreign skips "
        f"{dedup_leaks} (own: {own_hits}/{len(phashes)})",
    )
    assert not problems, problems
    assert result.indexed == result.expected, "a tenant's faces were suppressed by another tenant's"
    assert search_hits > 0 and search_leaks == 0
    assert not stats_wrong, stats_wrong
    assert dedup_leaks == 0 and own_hits == len(phashes)


# ---------------------------------------------------------------- deletion
def _unit(rng: np.random.Generator, dim: int) -> np.ndarray:
    vector = rng.normal(size=dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.mark.timeout(1200)
def test_delete_and_purge_never_touch_another_tenant(stack: Stack) -> None:
    settings = stack.settings
    index = VectorIndex(settings)
    index.ensure_collection(512)
    store = ObjectStore(settings)
    client = stack.redis()
    dedup = DedupCache(client, settings)
    stats = Stats(client, stage="reliability")
    rng = np.random.default_rng(5)
    checked = Counter()

    def write(tenant: str, sha: str, faces: int) -> None:
        points = []
        for face in range(faces):
            phash = f"{rng.integers(0, 2**63):016x}"
            keys = artifact_keys(tenant, sha, face)
            for bucket, key in (
                (settings.bucket_crops, keys.crop),
                (settings.bucket_thumbs, keys.thumb),
                (settings.bucket_metadata, keys.metadata),
            ):
                store.put_bytes(bucket, key, b"x")
            dedup.check_and_remember_batch([(tenant, [(phash, Owner(sha, face, "0-1"))])])
            points.append(
                FacePoint(
                    tenant,
                    sha,
                    face,
                    _unit(rng, 512),
                    {"source": {"bucket": settings.bucket_raw, "key": f"{tenant}/{sha}.jpg"}, "phash": phash},
                )
            )
        store.put_bytes(settings.bucket_raw, f"{tenant}/{sha}.jpg", b"raw")
        index.upsert(points)
        stats.incr("faces_processed", faces, tenant)

    def footprint(tenant: str) -> tuple[int, int, int, int, str | None]:
        objects = sum(
            1 for bucket in store.buckets for _key in store.list_keys(bucket, tenant_prefix(tenant))
        )
        dedup_keys = sum(1 for _ in client.scan_iter(match=f"{dedup.tenant_prefix(tenant)}*", count=500))
        return (
            index.count(tenant),
            objects,
            dedup_keys,
            len(list(index.scroll(tenant))),
            client.hget(stats.counters_key(tenant), "faces_processed"),
        )

    layouts = st.lists(
        st.tuples(st.sampled_from(range(6)), st.sampled_from(range(4)), st.integers(1, 3)),
        min_size=2,
        max_size=10,
        unique_by=lambda t: (t[0], t[1]),
    )

    @seed(55)
    @hypothesis_settings(
        max_examples=scaled(60, 12), deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(layout=layouts, victim=st.integers(0, 5), purge=st.booleans(), data=st.data())
    def prop(layout: list[tuple[int, int, int]], victim: int, purge: bool, data: st.DataObject) -> None:
        run = uuid.uuid4().hex[:6]
        names = [f"{run}{suffix}" for suffix in ("", "1", ".1", "-1", "_1", "10")]  # prefixes of each other
        for t, image, faces in layout:
            write(names[t], f"img{image}", faces)  # the same image ids in several tenants
        owners = {names[t] for t, _i, _f in layout}
        victim_name = names[victim]
        before = {name: footprint(name) for name in names}
        if purge:
            deletion.purge_tenant(settings, victim_name, redis_client=client, store=store, index=index)
        else:
            image = data.draw(st.sampled_from([f"img{i}" for i in range(4)]))
            deletion.delete_image(settings, victim_name, image, redis_client=client, store=store, index=index)
            assert not list(index.scroll(victim_name, image_sha256=image))
            assert not any(
                True
                for bucket in store.buckets
                for _ in store.list_keys(bucket, image_prefix(victim_name, image))
            )
        after = {name: footprint(name) for name in names}
        for name in names:
            if name != victim_name:
                assert after[name] == before[name], f"deleting in {victim_name!r} changed {name!r}"
                checked["other tenants"] += 1
        if purge and victim_name in owners:
            assert after[victim_name][:4] == (0, 0, 0, 0)
        checked["examples"] += 1

    prop()
    index.close()
    record(
        "5b. tenants: delete image / purge tenant (property)",
        checked["examples"] > 0,
        messages=checked["examples"],
        leaks=0,
        lost=0,
        duplicates=0,
        DLQ=0,
        notes=f"{checked['examples']} random layouts of 6 prefix-twin tenants sharing image ids; "
        f"{checked['other tenants']} bystander tenants checked unchanged "
        "(points, objects, dedup keys, stats)",
    )
    assert checked["examples"] >= scaled(60, 12) // 2


# ------------------------------------------------------------ escaping ids
def _refused(call: Any) -> bool:
    try:
        call()
    except PermanentError as exc:
        return exc.reason in {"invalid_tenant_id", "invalid_fields", "missing_fields"}
    except ValueError:
        return True
    return False


@pytest.mark.timeout(600)
def test_tenant_ids_that_try_to_escape_a_prefix_are_refused_everywhere(stack: Stack) -> None:
    settings = stack.settings
    index = VectorIndex(settings)
    index.ensure_collection(512)
    client = stack.redis()
    dedup = DedupCache(client, settings)
    store = ObjectStore(settings)
    stack.spawn_ops_api()
    base = f"http://127.0.0.1:{stack.ops_port}"
    tally_ = Counter()

    def check(tenant: str) -> None:
        valid = is_valid_tenant_id(tenant)
        tally_["valid" if valid else "refused"] += 1
        if valid:
            # An accepted id cannot leave its prefix: no separator, glob or path syntax in it.
            assert not any(ch in tenant for ch in ":*?[]/\\\x00\n ") and ".." not in tenant
            # ...and it sits in its own slot of every key and path, with the separators after it.
            assert dedup.tenant_prefix(tenant) == f"dedup:t:{tenant}:"
            assert Stats(client).counters_key(tenant) == f"stats:tenant:{tenant}:counters"
            assert tenant_prefix(tenant) == f"{tenant}/"
            return
        payload = {"image_sha256": "abc", "bucket": settings.bucket_raw, "key": "k.jpg", "tenant_id": tenant}
        refusals = [
            _refused(lambda: validate_tenant_id(tenant)),
            _refused(lambda: parse_message(IngestMessage, payload)),
            _refused(lambda: index.search(tenant, np.ones(512, np.float32))),
            _refused(lambda: list(index.scroll(tenant))),
            _refused(lambda: index.delete_tenant(tenant)),
            _refused(lambda: dedup.lookup(tenant, "0" * 16)),
            _refused(lambda: dedup.flush(tenant)),
            _refused(lambda: tenant_prefix(tenant)),
            _refused(
                lambda: deletion.purge_tenant(settings, tenant, redis_client=client, store=store, index=index)
            ),
        ]
        assert all(refusals), (tenant, refusals)
        stats_status = httpx.get(f"{base}/stats", params={"tenant_id": tenant}, timeout=30).status_code
        delete_status = httpx.delete(
            f"{base}/images/abc", params={"tenant_id": tenant}, timeout=30
        ).status_code
        assert stats_status in (400, 422) or (tenant == "" and stats_status == 200), (tenant, stats_status)
        assert delete_status in (400, 422), (tenant, delete_status)
        # Percent-encoded, as a client must send an arbitrary id in a path (unencoded, "a/../b" would be
        # resolved by the client itself to "/tenants/b" before the server sees it).
        purge = httpx.delete(f"{base}/tenants/{quote(tenant, safe='')}", timeout=30).status_code
        assert purge in (400, 404, 405, 422), (tenant, purge)

    dedup.check_and_remember_batch([("victim", [("f" * 16, Owner("img", 0, "0-1"))])])
    keys_before = sorted(client.keys("*"))
    for tenant in ESCAPES:
        check(tenant)

    @seed(7)
    @hypothesis_settings(
        max_examples=scaled(500, 150), deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:*/-]{0,66}", fullmatch=True))
    def prop(tenant: str) -> None:
        check(tenant)

    prop()
    keys_after = sorted(client.keys("*"))
    index.close()
    untouched = [k for k in keys_before if k.startswith("dedup:")] == [
        k for k in keys_after if k.startswith("dedup:")
    ]
    record(
        "5c. tenants: escaping ids (a:b, ../x, *, ...)",
        untouched and tally_["refused"] > 0,
        messages=sum(tally_.values()),
        leaks=0 if untouched else 1,
        lost=0,
        duplicates=0,
        DLQ=0,
        notes=f"{tally_['refused']} hostile ids refused by ingest, vectors, dedup, storage, deletion and "
        f"the ops-api; {tally_['valid']} accepted ids checked to stay inside their prefix",
    )
    assert untouched, "an escaping tenant id touched another tenant's dedup keys"
    assert tally_["refused"] >= len(ESCAPES) - 1
