"""Dedup figures: check-and-remember throughput through a real Redis, and recall by Hamming
distance on real face-crop pHash pairs, ours (multi-index hashing) side by side with the
Phase 3 prefix scheme (docs/compatibility.md).

Throughput: a cache of ``cached`` random 64-bit hashes spread over many tenants, then client
processes send the production call (``check_and_remember_batch`` of messages' faces) for
fresh hashes, a tenth of them near-duplicates of cached ones. The CPU time of Redis's main thread
per check is what one Redis can serve (its capacity); the clients share this machine's cores.

Recall: pairs (crop, perturbed crop) of real faces from the bench images: landmark jitter
(what a detector does between two copies of an image), JPEG re-encoding, brightness and
contrast, rescaling, blur, and mixtures. Each pair is stored and checked through Redis by
both schemes at threshold 8: for d <= 8 a hit is a correct detection (recall), for d > 8 a hit
would be a false duplicate (both schemes must give 0 there).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import redis

from bench.common import rounded
from facepipe.core.settings import load_settings
from facepipe.store.dedup import DedupCache, Owner, hamming, plan_layout
from facepipe.vision.imaging import align_face, phash64

THRESHOLD = 8
MAX_DISTANCE = 16
RUNBOOK_PREFIX_HEX = 4  # Phase 3 (docs/dedup.md): "Prefix = first 4 chars for sharding"


def random_hashes(rng: np.random.Generator, count: int) -> list[str]:
    return [f"{int(v):016x}" for v in rng.integers(0, 2**64, size=count, dtype=np.uint64)]


def flip_bits(phash: str, distance: int, rng: np.random.Generator) -> str:
    value = int(phash, 16)
    for bit in rng.choice(64, size=distance, replace=False):
        value ^= 1 << int(bit)
    return f"{value:016x}"


def dedup_cache(redis_url: str, threshold: int = THRESHOLD, path: str = "optimistic") -> DedupCache:
    """``path`` "script": every call through the all-in-Redis script (the fallback path)."""
    settings = load_settings(redis_url=redis_url, dedup_max_hamming=threshold, enable_global_dedup=True)
    tuning = {"optimistic_attempts": 0} if path == "script" else {}
    return DedupCache(redis.Redis.from_url(redis_url), settings, **tuning)


# --- throughput --------------------------------------------------------------------------------


def fill_cache(redis_url: str, cached: int, tenants: int, seed: int = 11) -> dict[str, float]:
    """Remember ``cached`` random hashes, hash i in tenant ``bt<i % tenants>`` (100 per call)."""
    cache = dedup_cache(redis_url)
    hashes = random_hashes(np.random.default_rng(seed), cached)
    started = time.perf_counter()
    per_call = 100
    for start in range(0, cached, per_call):
        tenant = f"bt{(start // per_call) % tenants}"
        faces = [(h, Owner(f"fill{start + i}", 0)) for i, h in enumerate(hashes[start : start + per_call])]
        cache.check_and_remember_batch([(tenant, faces)])
    seconds = time.perf_counter() - started
    info = cache.redis.info("memory")
    return {
        "hashes": cached,
        "tenants": tenants,
        "seconds": rounded(seconds, 2),
        "remembered_per_s": rounded(cached / seconds, 1),
        "redis_used_memory_mib": rounded(info["used_memory"] / 2**20, 1),
        "keys": cache.redis.dbsize(),
    }


def _client_worker(
    redis_url: str,
    cached: int,
    tenants: int,
    checks: int,
    faces_per_message: int,
    messages_per_call: int,
    path: str,
    worker: int,
    seed: int,
    queue: multiprocessing.Queue,
) -> None:
    cache = dedup_cache(redis_url, path=path)
    rng = np.random.default_rng(seed * 1000 + worker)
    known = random_hashes(np.random.default_rng(11), cached)  # the fill's hashes (same seed)
    queries: list[tuple[str, str]] = []
    for _index in range(checks):
        if rng.random() < 0.1:  # a near-duplicate of a cached hash, in that hash's tenant
            source = int(rng.integers(0, cached))
            tenant = f"bt{(source // 100) % tenants}"
            queries.append((tenant, flip_bits(known[source], int(rng.integers(1, THRESHOLD + 1)), rng)))
        else:
            queries.append((f"bt{int(rng.integers(0, tenants))}", random_hashes(rng, 1)[0]))
    messages = [queries[i : i + faces_per_message] for i in range(0, len(queries), faces_per_message)]
    duplicates = 0
    started = time.perf_counter()
    for start in range(0, len(messages), messages_per_call):
        batch = [
            (message[0][0], [(h, Owner(f"w{worker}s{seed}m{n}", i)) for i, (_t, h) in enumerate(message)])
            for n, message in enumerate(messages[start : start + messages_per_call], start)
        ]
        results = cache.check_and_remember_batch(batch)
        duplicates += sum(r.is_duplicate for faces in results for r in faces)
    queue.put((len(queries), time.perf_counter() - started, duplicates))


def throughput(
    redis_url: str,
    cached: int,
    tenants: int,
    checks_per_client: int,
    clients: int,
    faces_per_message: int,
    messages_per_call: int,
    path: str,
    seed: int,
) -> dict[str, float | str]:
    """Checks/s of ``clients`` processes, and Redis's own CPU per check: its main thread's CPU time
    (commands, scripts, request parsing, socket I/O), with commandstats' command time beside it.

    ``path``: "optimistic" (the production call) or "script" (every call decided inside Redis).
    ``messages_per_call``: messages per ``check_and_remember_batch`` (the indexer passes its batch,
    up to WORKER_BATCH_SIZE messages).
    """
    admin = redis.Redis.from_url(redis_url)
    admin.config_resetstat()
    cpu_before = _redis_main_thread_cpu(admin)
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue = context.Queue()
    workers = [
        context.Process(
            target=_client_worker,
            args=(
                redis_url,
                cached,
                tenants,
                checks_per_client,
                faces_per_message,
                messages_per_call,
                path,
                w,
                seed,
                queue,
            ),
        )
        for w in range(clients)
    ]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    checks = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    server_us = (_redis_main_thread_cpu(admin) - cpu_before) * 1e6
    stats = admin.info("commandstats")
    commits = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    # Commands the clients sent (those run inside scripts are counted in EVALSHA's time too).
    top_level = ("cmdstat_evalsha", "cmdstat_hmget", "cmdstat_mget", "cmdstat_time")
    command_us = sum(float(v["usec"]) for k, v in stats.items() if k in top_level)
    admin.close()
    return {
        "path": path,
        "clients": clients,
        "faces_per_message": faces_per_message,
        "messages_per_call": messages_per_call,
        "script_calls": commits,
        "checks": checks,
        "checks_per_s": rounded(checks / wall, 1),
        "server_us_per_check": rounded(server_us / checks, 1),
        "command_us_per_check": rounded(command_us / checks, 1),
        "duplicates_found": sum(r[2] for r in results),
    }


def _redis_main_thread_cpu(admin: redis.Redis) -> float:
    """CPU seconds of Redis's main thread: commands, scripts, parsing and socket I/O alike."""
    cpu = admin.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


# --- recall ------------------------------------------------------------------------------------


class RunbookPrefixDedup:
    """The Phase 3 scheme, for comparison: near-duplicates are looked for only among the hashes
    whose first four hex digits equal the query's (``dedup:near:{tenant}:{prefix}`` SETs)."""

    def __init__(self, client: redis.Redis, threshold: int = THRESHOLD, root: str = "benchseed:") -> None:
        self.redis = client
        self.threshold = threshold
        self.root = root

    def _key(self, tenant: str, phash: str) -> str:
        return f"{self.root}near:{tenant}:{phash[:RUNBOOK_PREFIX_HEX]}"

    def remember(self, tenant: str, phash: str) -> None:
        self.redis.sadd(self._key(tenant, phash), phash)

    def is_duplicate(self, tenant: str, phash: str) -> bool:
        members = self.redis.smembers(self._key(tenant, phash))
        return any(
            hamming(m.decode() if isinstance(m, bytes) else m, phash) <= self.threshold for m in members
        )


@dataclass(frozen=True)
class FaceSample:
    patch: np.ndarray  # BGR region around the face
    kps: np.ndarray  # landmarks in the patch's frame


def face_samples(detector, pixels: Sequence[np.ndarray]) -> list[FaceSample]:
    """The faces of the images, each cut out with a margin (perturbing a patch is cheaper)."""
    samples = []
    for img in pixels:
        for det in detector.detect(img):
            x1, y1, x2, y2 = (float(v) for v in det.bbox)
            pad = 0.6 * max(x2 - x1, y2 - y1)
            left, top = max(0, int(x1 - pad)), max(0, int(y1 - pad))
            right, bottom = min(img.shape[1], int(x2 + pad)), min(img.shape[0], int(y2 + pad))
            if min(x2 - x1, y2 - y1) < 40:  # a quality-gate reject in the pipeline anyway
                continue
            samples.append(
                FaceSample(img[top:bottom, left:right].copy(), det.kps - np.array([left, top], np.float32))
            )
    return samples


def perturb(sample: FaceSample, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """One random perturbation (or mixture) of a face patch; returns (patch, landmarks, kinds)."""
    img, kps = sample.patch, sample.kps.copy()
    kinds = list(
        rng.choice(["shift", "jpeg", "light", "scale", "blur"], size=int(rng.integers(1, 4)), replace=False)
    )
    for kind in kinds:
        if kind == "shift":  # detector landmark jitter between two copies of an image
            kps = kps + rng.normal(0, rng.uniform(0.3, 4.0), size=kps.shape).astype(np.float32)
        elif kind == "jpeg":
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(10, 95))])
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else img
        elif kind == "light":
            gain, bias = rng.uniform(0.6, 1.4), rng.uniform(-50, 50)
            img = np.clip(img.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
        elif kind == "scale":
            factor = rng.uniform(0.2, 0.9)
            size = (max(8, round(img.shape[1] * factor)), max(8, round(img.shape[0] * factor)))
            kps = kps * np.array([size[0] / img.shape[1], size[1] / img.shape[0]], np.float32)
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        elif kind == "blur":
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 3.0))
    return img, kps, "+".join(sorted(kinds))


def crop_pairs(
    samples: Sequence[FaceSample], per_distance: int, max_attempts: int, seed: int = 5
) -> list[tuple[str, str, int]]:
    """(pHash, perturbed pHash, distance) with up to ``per_distance`` pairs for each d in 0..16."""
    rng = np.random.default_rng(seed)
    originals = [phash64(align_face(s.patch, s.kps)) for s in samples]
    buckets: dict[int, list[tuple[str, str, int]]] = {d: [] for d in range(MAX_DISTANCE + 1)}
    for attempt in range(max_attempts):
        index = attempt % len(samples)
        img, kps, _kinds = perturb(samples[index], rng)
        other = phash64(align_face(img, kps))
        distance = hamming(originals[index], other)
        if distance <= MAX_DISTANCE and len(buckets[distance]) < per_distance:
            buckets[distance].append((originals[index], other, distance))
        if all(len(pairs) >= per_distance for pairs in buckets.values()):
            break
    return [pair for pairs in buckets.values() for pair in pairs]


def flip_pairs(per_distance: int, seed: int = 9) -> list[tuple[str, str, int]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for distance in range(MAX_DISTANCE + 1):
        for phash in random_hashes(rng, per_distance):
            pairs.append((phash, flip_bits(phash, distance, rng), distance))
    return pairs


def recall_by_distance(
    redis_url: str, pairs: Sequence[tuple[str, str, int]], label: str
) -> dict[str, dict[str, float | int | None]]:
    """Detection rate per distance for both schemes, each pair in a tenant of its own."""
    cache = dedup_cache(redis_url)
    seed_scheme = RunbookPrefixDedup(cache.redis)
    hits: dict[str, dict[int, int]] = {"ours": {}, "seed_prefix": {}}
    counts: dict[int, int] = {}
    for number, (stored, query, distance) in enumerate(pairs):
        tenant = f"{label}{number}"
        cache.check_and_remember_batch([(tenant, [(stored, Owner(f"{label}a{number}", 0))])])
        seed_scheme.remember(tenant, stored)
        counts[distance] = counts.get(distance, 0) + 1
        hits["ours"][distance] = hits["ours"].get(distance, 0) + int(
            cache.lookup(tenant, query, Owner(f"{label}b{number}", 0)).is_duplicate
        )
        hits["seed_prefix"][distance] = hits["seed_prefix"].get(distance, 0) + int(
            seed_scheme.is_duplicate(tenant, query)
        )

    def rates(scheme: str) -> dict[str, float | None]:
        return {
            str(d): (rounded(hits[scheme].get(d, 0) / counts[d]) if counts.get(d) else None)
            for d in range(MAX_DISTANCE + 1)
        }

    return {
        "ours": rates("ours"),
        "seed_prefix": rates("seed_prefix"),
        "pairs": {str(d): counts.get(d, 0) for d in range(MAX_DISTANCE + 1)},
    }


def layout_description(threshold: int = THRESHOLD) -> dict[str, object]:
    layout = plan_layout(threshold)
    return {
        "threshold": threshold,
        "chunk_bits": [w for _, w in layout.chunks],
        "radii": list(layout.radii),
        "set_lookups_per_check": layout.lookups_per_hash(),
    }
