"""What the deploy scenarios share: installing a pipeline in the simulation, ingesting, looking for traces."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import redis
from simkit import apply, describe, get, is_ready, kubectl, pods, settled, wait_for

from facepipe.core.settings import Settings, dlq_stream
from facepipe.operator.constants import COMPONENTS, LABEL_COMPONENT, LABEL_INSTANCE
from facepipe.sim.cluster import ClusterSim
from facepipe.sim.cluster_addons import chart_documents
from facepipe.store.dedup import DedupCache
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import VectorIndex

REPO = Path(__file__).resolve().parents[2]
TENANT_CHART = REPO / "charts" / "face-pipeline"
FACEPIPE = str(Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "facepipe")
SCALE = float(os.environ.get("CLUSTER_SIM_SCALE", "0.25"))  # `make cluster-sim-scenarios`: 1


def connection_values(namespace: str) -> dict[str, Any]:
    """The only values a user must give the tenant chart: where Redis, S3 and Qdrant are."""
    return {
        "redis": {"url": f"redis://redis.{namespace}.svc:6379/0"},
        "storage": {"endpoint": f"minio.{namespace}.svc:9000"},
        "vectorDb": {"url": f"http://qdrant.{namespace}.svc:6333"},
    }


def render_tenant_chart(values: dict[str, Any], release: str, namespace: str) -> list[dict[str, Any]]:
    """`helm template` of the tenant chart, with the real Helm engine."""
    rendered = helm.Chart.load(str(TENANT_CHART)).render(values, name=release, namespace=namespace)
    return chart_documents(rendered)


def prefill_models_claim(
    sim: ClusterSim, namespace: str, models_dir: Path, claim: str = "face-models"
) -> str:
    """The documented air-gapped path: a claim holding the model files, filled before the install."""
    apply(
        sim,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
        },
        namespace=namespace,
    )
    shutil.copytree(models_dir, sim.claim_folder(namespace, claim), dirs_exist_ok=True)
    return claim


def component_pods(sim: ClusterSim, namespace: str, instance: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {component: [] for component in COMPONENTS}
    for item in pods(sim, namespace, f"{LABEL_INSTANCE}={instance}"):
        if not item["metadata"].get("deletionTimestamp"):
            found.setdefault(item["metadata"]["labels"].get(LABEL_COMPONENT, "?"), []).append(item)
    return found


def settle_components(
    sim: ClusterSim,
    namespace: str,
    instance: str,
    timeout: float = 300,
    components: tuple[str, ...] = COMPONENTS,
) -> dict[str, Any]:
    """Wait until every component has pods and each pod is Ready or stuck for a lasting reason."""

    def probe() -> dict[str, Any] | None:
        found = component_pods(sim, namespace, instance)
        if all(found[c] and all(settled(p) for p in found[c]) for c in components):
            return found
        return None

    return wait_for(probe, timeout=timeout, interval=1, what=f"the components of {instance} to settle")


def all_ready(
    sim: ClusterSim,
    namespace: str,
    instance: str,
    timeout: float = 300,
    components: tuple[str, ...] = COMPONENTS,
) -> None:
    """Assert: all four components (or those given), every pod Ready (each pod's state and logs when not)."""
    found = settle_components(sim, namespace, instance, timeout, components)
    not_ready = [p for c in components for p in found[c] if not is_ready(p)]
    assert not not_ready, "pods not Ready:\n" + describe(sim, not_ready)


def config(sim: ClusterSim, namespace: str, instance: str) -> dict[str, str]:
    """The pipeline's ConfigMap: the environment its components share."""
    return json.loads(kubectl(sim, "get", "configmap", f"{instance}-config", "-n", namespace, "-o", "json"))[
        "data"
    ]


def facepipe(
    sim: ClusterSim, namespace: str, instance: str, *args: str, timeout: float = 900
) -> dict[str, Any]:
    """The documented CLI, run as a user with the pipeline's settings (its ConfigMap) would run it."""
    done = sim.run_on_host(
        [FACEPIPE, *args], namespace=namespace, env=config(sim, namespace, instance), timeout=timeout
    )
    assert done.returncode == 0, f"facepipe {' '.join(args)}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


def ingest(sim: ClusterSim, namespace: str, instance: str, tenant: str, images: list[Path]) -> dict[str, Any]:
    args = ["ingest", "--tenant", tenant, "--wait", "--json", "--timeout", "600", *map(str, images)]
    return facepipe(sim, namespace, instance, *args)


def host_settings(sim: ClusterSim, namespace: str, instance: str) -> Settings:
    """The pipeline's settings, with the backing servers' host addresses (for checks from the test)."""
    env = dict(config(sim, namespace, instance))
    env.update(
        REDIS_URL=sim.backing.url("redis"),
        MINIO_ENDPOINT=sim.backing.url("s3"),
        QDRANT_URL=sim.backing.url("qdrant"),
        MINIO_ACCESS_KEY="minioadmin",
        MINIO_SECRET_KEY="minioadmin",
    )
    return Settings.model_validate(env)


def traces(settings: Settings, tenant: str) -> dict[str, int]:
    """What is left of a tenant: points, objects, dedup keys, stream and DLQ entries naming it."""
    client = redis.Redis.from_url(settings.redis_url)
    store = ObjectStore(settings)
    index = VectorIndex(settings)
    try:
        # Every collection of the family: a collection per model pack, the tenant's alias naming one.
        points = sum(index.view(name).count(tenant) for name in index.family_collections())
        objects = sum(
            len(list(store.list_keys(bucket, f"{tenant}/")))
            for bucket in store.buckets
            if store.client.bucket_exists(bucket)
        )
        dedup = len(list(client.scan_iter(match=f"{DedupCache(client, settings).tenant_prefix(tenant)}*")))
        entries = 0
        for stream in settings.pipeline_streams:
            for name in (stream, dlq_stream(stream)):
                for _, fields in client.xrange(name):
                    entries += any(f'"{tenant}"'.encode() in value for value in fields.values())
        return {"points": points, "objects": objects, "dedup_keys": dedup, "stream_entries": entries}
    finally:
        client.close()


def replica_set_hashes(sim: ClusterSim, namespace: str, instance: str) -> dict[str, set[str]]:
    """Pod-template hashes of each component's ReplicaSets that still want pods."""
    sets = (get(sim, f"/apis/apps/v1/namespaces/{namespace}/replicasets") or {}).get("items") or []
    hashes: dict[str, set[str]] = {c: set() for c in COMPONENTS}
    for rs in sets:
        labels = rs["metadata"].get("labels") or {}
        if labels.get(LABEL_INSTANCE) == instance and rs["spec"].get("replicas"):
            hashes[labels[LABEL_COMPONENT]].add(labels["pod-template-hash"])
    return hashes


# --- installing, images ---


def pipeline_values(namespace: str, tenant: str, claim: str, **extra: Any) -> dict[str, Any]:
    """Connection details, the small model pack, and the models from a pre-filled claim."""
    return {
        "tenantId": tenant,
        **connection_values(namespace),
        "models": {"pack": "buffalo_sc", "volume": {"claimName": claim}},
        **extra,
    }


def install(cluster_sim: ClusterSim, namespace: str, models_dir: Path, tenant: str, **extra: Any) -> None:
    claim = prefill_models_claim(cluster_sim, namespace, models_dir)
    docs = render_tenant_chart(pipeline_values(namespace, tenant, claim, **extra), tenant, namespace)
    apply(cluster_sim, *docs, namespace=namespace)
    all_ready(cluster_sim, namespace, tenant)


def photos(faces_dir: Path) -> list[Path]:
    return sorted(p for p in faces_dir.iterdir() if p.suffix in (".jpg", ".png"))


def generated(tmp_path: Path, faces_dir: Path, count: int, seed: int) -> list[Path]:
    """``count`` distinct images made from the test photos (crops, flips, mosaics; some face-less)."""
    from reliability_images import composite, load_photos

    folder = tmp_path / f"images-{seed}"
    folder.mkdir()
    out = []
    for n, (_, data, content_type) in enumerate(composite(load_photos(faces_dir), count, seed)):
        path = folder / f"{n:04d}.{'png' if content_type == 'image/png' else 'jpg'}"
        path.write_bytes(data)
        out.append(path)
    return out


# --- figures: one row per scenario, printed at the end of the session (tests/sim/conftest.py) ---

FIGURES: list[dict[str, str]] = []


def record(scenario: str, measured: str, verdict: bool) -> None:
    """A row of the figures table: the scenario, what it measured, PASS or FAIL."""
    FIGURES.append({"scenario": scenario, "measured": measured, "verdict": "PASS" if verdict else "FAIL"})


def figures_markdown() -> str:
    lines = ["| scenario | measured | verdict |", "|---|---|---|"]
    lines += [f"| {r['scenario']} | {r['measured']} | {r['verdict']} |" for r in FIGURES]
    return "\n".join(lines)


class ReplicaRecorder:
    """Every Deployment's ``spec.replicas`` in a namespace over time (what the autoscalers set)."""

    def __init__(self, sim: ClusterSim, namespace: str, interval: float = 0.5) -> None:
        self.sim, self.namespace, self.interval = sim, namespace, interval
        self.history: dict[str, list[tuple[float, int]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="replica-recorder", daemon=True)

    def __enter__(self) -> ReplicaRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _loop(self) -> None:
        path = f"/apis/apps/v1/namespaces/{self.namespace}/deployments"
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, ValueError):
                for deployment in (get(self.sim, path) or {}).get("items") or []:
                    name = deployment["metadata"]["name"]
                    replicas = int(deployment["spec"].get("replicas", 1))
                    seen = self.history.setdefault(name, [])
                    if not seen or seen[-1][1] != replicas:
                        seen.append((time.time(), replicas))

    def now(self, name: str) -> int | None:
        seen = self.history.get(name)
        return seen[-1][1] if seen else None

    def peak(self, name: str) -> int:
        return max((replicas for _, replicas in self.history.get(name, [])), default=0)

    def first_time(self, name: str, condition: Callable[[int], bool], after: float = 0.0) -> float | None:
        return next(
            (at for at, replicas in self.history.get(name, []) if at >= after and condition(replicas)), None
        )
