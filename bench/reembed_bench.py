"""The model-pack backfill's throughput beside the embedder's own.

A tenant's faces are stored as the indexer leaves them (aligned crops in S3, points in
another pack's collection, the tenant's alias on it); the backfill
(facepipe.ops_api.reembed) then re-embeds them all with the bench's pack into its own
collection and switches the tenant: real Redis, SeaweedFS and Qdrant Edge. Its faces/s,
end to end (S3 reads, JPEG decode, inference, upserts, progress records, the catch-up
passes, the switch), are shown beside the same recognizer embedding the same crops in a
tight loop at the same batch size: the gap is what the backfill adds around the model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import redis

from bench.common import median, rounded
from bench.models_bench import embed_rate
from facepipe.core.packs import get_pack
from facepipe.core.settings import Settings, load_settings
from facepipe.store.storage import ObjectStore, artifact_keys
from facepipe.store.vectors import FacePoint, VectorIndex
from facepipe.vision.imaging import encode_jpeg
from facepipe.vision.models import FaceEmbedder

TENANT = "bench"
BATCH = 32


def store_faces(
    settings: Settings, index: VectorIndex, crops: Sequence[np.ndarray], source_pack: str
) -> None:
    """The faces as the indexer leaves them: a crop each in S3, a point in the source pack's collection."""
    store = ObjectStore(settings)
    store.ensure_buckets()
    pack = get_pack(source_pack)
    source = index.view(index.ensure_pack_collection(pack))
    rng = np.random.default_rng(0)
    points = []
    for number, crop in enumerate(crops):
        sha = f"{number:064x}"
        keys = artifact_keys(TENANT, sha, 0)
        store.put_bytes(settings.bucket_crops, keys.crop, encode_jpeg(crop), "image/jpeg")
        vector = rng.normal(size=pack.dim).astype(np.float32)
        payload = {
            "model_pack": pack.name,
            "model": pack.embedder_info(),
            "artifacts": {"crop": {"bucket": settings.bucket_crops, "key": keys.crop}},
        }
        points.append(FacePoint(TENANT, sha, 0, vector / np.linalg.norm(vector), payload))
    for start in range(0, len(points), 256):
        source.upsert(points[start : start + 256])
    index.set_route(TENANT, source.collection)


def reembed_figure(
    embedder: FaceEmbedder, crops: Sequence[np.ndarray], source_pack: str, repeats: int
) -> dict[str, object]:
    from facepipe.cli.localservers import start_redis, start_seaweedfs
    from facepipe.ops_api.reembed.backfill import Reembedder
    from facepipe.ops_api.reembed.options import ReembedOptions

    rates, backfill = [], []
    with tempfile.TemporaryDirectory(prefix="bench-reembed-") as folder:
        root = Path(folder)
        redis_server, s3 = start_redis(root / "redis"), start_seaweedfs(root / "s3")
        try:
            for repeat in range(repeats):
                rates.append(embed_rate(embedder, crops, BATCH))
                settings = load_settings(
                    redis_url=redis_server.url,
                    minio_endpoint=s3.url,
                    qdrant_url="embedded",
                    qdrant_path=root / f"qdrant-{repeat}",
                    model_pack=embedder.pack.name,
                )
                index = VectorIndex(settings)
                client = redis.Redis.from_url(settings.redis_url)
                try:
                    store_faces(settings, index, crops, source_pack)
                    options = ReembedOptions(batch=BATCH, settle_s=0.0)
                    report = Reembedder(
                        settings,
                        TENANT,
                        embedder.pack.name,
                        index=index,
                        store=ObjectStore(settings),
                        redis_client=client,
                        options=options,
                        embedder=embedder,
                    ).run()
                finally:
                    client.close()
                    index.close()
                assert report.embedded == len(crops) and report.migrated == len(crops), report
                backfill.append(report.faces_per_s)
        finally:
            s3.stop()
            redis_server.stop()
    faces_per_s, embedder_rate = median(backfill), median(rates)
    return {
        "reembed_faces_per_s": rounded(faces_per_s, 1),
        "reembed": {
            "faces": len(crops),
            "batch": BATCH,
            "source_pack": source_pack,
            "pack": embedder.pack.name,
            "store": "embedded (Qdrant Edge), SeaweedFS, Redis",
            "runs_faces_per_s": [rounded(rate, 1) for rate in backfill],
            "embedder_faces_per_s": rounded(embedder_rate, 1),
            "share_of_embedder_rate": rounded(faces_per_s / embedder_rate),
        },
    }
