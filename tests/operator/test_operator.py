"""The real operator (Kopf running facepipe.operator.main) against the emulated API server."""

from __future__ import annotations

import base64
import json
import logging
import threading
from typing import Any

import pytest
import redis
from operatorkit import facepipeline, minimal_spec, wait_for

from facepipe.core.settings import Settings
from facepipe.core.tenancy import tenant_stream_name
from facepipe.operator.handlers import pipeline
from facepipe.operator.handlers.runtime import RUNTIME
from facepipe.operator.kube import (
    CONFIG_MAP,
    DEPLOYMENT,
    FACE_PIPELINE,
    HPA,
    POD,
    SCALED_OBJECT,
    SECRET,
    SERVICE,
    KubeApi,
)
from facepipe.sim.emulator import EmulatorServer, write_kubeconfig

pytestmark = pytest.mark.usefixtures("operator_runner")

COMPONENTS = ("detector", "embedder", "indexer", "ops-api")
LOGGER = logging.getLogger("tests.operator")


def get(kube: KubeApi, kind: Any, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.get(kind, namespace, name)


def status(kube: KubeApi, namespace: str, name: str = "acme") -> dict[str, Any]:
    return (kube.get(FACE_PIPELINE, namespace, name) or {}).get("status") or {}


def condition(kube: KubeApi, namespace: str, kind: str, name: str = "acme") -> dict[str, Any]:
    return next((c for c in status(kube, namespace, name).get("conditions", []) if c["type"] == kind), {})


def wait_for_children(kube: KubeApi, namespace: str, name: str = "acme") -> dict[str, dict[str, Any]]:
    def all_there() -> dict[str, dict[str, Any]] | None:
        found = {c: kube.get(DEPLOYMENT, namespace, f"{name}-{c}") for c in COMPONENTS}
        return found if all(found.values()) else None  # type: ignore[return-value]

    return wait_for(all_there, what="four Deployments")


def template(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in template(deployment)["spec"]["containers"][0]["env"]}


def patch_spec(kube: KubeApi, namespace: str, patch: dict[str, Any], name: str = "acme") -> None:
    kube.patch(FACE_PIPELINE, namespace, name, {"spec": patch})


def test_create_builds_every_child_owned_with_the_right_env(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    spec = minimal_spec(redis_url)
    spec["dedup"] = {"maxHamming": 10}
    spec["components"] = {"detector": {"autoscaling": {"enabled": True, "maxReplicas": 4}}}
    owner = kube.create(facepipeline("acme", namespace, spec))
    uid = owner["metadata"]["uid"]
    deployments = wait_for_children(kube, namespace)
    config = wait_for(lambda: kube.get(CONFIG_MAP, namespace, "acme-config"), what="the ConfigMap")
    service = kube.get(SERVICE, namespace, "acme-ops-api")
    hpa = wait_for(lambda: kube.get(HPA, namespace, "acme-detector"), what="the detector HPA")
    assert service is not None

    assert config["data"]["DEDUP_MAX_HAMMING"] == "10"
    assert config["data"]["REDIS_URL"] == redis_url
    for child in [config, service, hpa, *deployments.values()]:
        assert [
            (r["kind"], r["name"], r["uid"], r["controller"]) for r in child["metadata"]["ownerReferences"]
        ] == [("FacePipeline", "acme", uid, True)]
    for component in ("detector", "embedder", "indexer"):
        env = env_of(deployments[component])
        assert env["REDIS_CONSUMER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["METRICS_PORT"]["value"] == "9100"
        labels = template(deployments[component])["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component and labels["facepipe.io/tenant"] == "acme"
    assert hpa["spec"]["maxReplicas"] == 4
    assert "replicas" not in deployments["detector"]["spec"]  # the HPA owns it
    assert kube.get(HPA, namespace, "acme-embedder") is None

    final = wait_for(
        lambda: status(kube, namespace).get("components") and status(kube, namespace),
        what="a status with components",
    )
    assert final["observedGeneration"] == owner["metadata"]["generation"]
    assert final["readyComponents"] == "0/4"  # the emulator runs no pods
    assert final["phase"] == "Progressing"
    assert condition(kube, namespace, "Degraded")["status"] == "False"


def test_max_hamming_edit_rolls_only_its_readers_and_restart_at_rolls_all(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    kube.create(facepipeline("acme", namespace, minimal_spec(redis_url)))
    before = wait_for_children(kube, namespace)
    patch_spec(kube, namespace, {"dedup": {"maxHamming": 14}})
    wait_for(
        lambda: (
            (kube.get(CONFIG_MAP, namespace, "acme-config") or {}).get("data", {}).get("DEDUP_MAX_HAMMING")
            == "14"
        ),
        what="the ConfigMap update",
    )

    def hashes_moved() -> dict[str, dict[str, Any]] | None:
        now = {c: kube.get(DEPLOYMENT, namespace, f"acme-{c}") for c in COMPONENTS}
        moved = all(
            template(now[c])["metadata"]["annotations"]["facepipe.io/config-hash"]  # type: ignore[index]
            != template(before[c])["metadata"]["annotations"]["facepipe.io/config-hash"]
            for c in ("indexer", "ops-api")
        )
        return now if moved else None  # type: ignore[return-value]

    after = wait_for(hashes_moved, what="new config hashes on indexer, ops-api")
    # The detector and embedder do not read dedup settings: untouched, not even a new resourceVersion.
    for untouched in ("detector", "embedder"):
        assert (
            after[untouched]["metadata"]["resourceVersion"]
            == before[untouched]["metadata"]["resourceVersion"]
        )
        assert template(after[untouched]) == template(before[untouched])

    patch_spec(kube, namespace, {"restartAt": "2026-11-28T12:00:00Z"})
    for component in COMPONENTS:
        wait_for(
            lambda c=component: (
                template(kube.get(DEPLOYMENT, namespace, f"acme-{c}"))["metadata"][  # type: ignore[arg-type]
                    "annotations"
                ].get("kubectl.kubernetes.io/restartedAt")
                == "2026-11-28T12:00:00Z"
            ),
            what=f"restartedAt on {component}",
        )


def test_keda_provider_swaps_the_hpa_for_a_scaled_object_and_back(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    spec = minimal_spec(redis_url)
    spec["components"] = {"indexer": {"autoscaling": {"enabled": True, "targetLagPerReplica": 40}}}
    kube.create(facepipeline("acme", namespace, spec))
    wait_for(lambda: kube.get(HPA, namespace, "acme-indexer"), what="the HPA")
    assert kube.get(SCALED_OBJECT, namespace, "acme-indexer") is None

    patch_spec(kube, namespace, {"components": {"indexer": {"autoscaling": {"provider": "keda"}}}})
    scaled = wait_for(lambda: kube.get(SCALED_OBJECT, namespace, "acme-indexer"), what="the ScaledObject")
    wait_for(lambda: kube.get(HPA, namespace, "acme-indexer") is None, what="the HPA to go")
    lag, pending = scaled["spec"]["triggers"]
    assert lag["type"] == pending["type"] == "redis-streams"
    assert (lag["metadata"]["lagCount"], pending["metadata"]["pendingEntriesCount"]) == ("40", "40")
    for trigger in (lag, pending):
        assert trigger["metadata"]["stream"] == "face-processing-queue:{acme}:embedded"

    patch_spec(kube, namespace, {"components": {"indexer": {"autoscaling": {"provider": "hpa"}}}})
    wait_for(lambda: kube.get(HPA, namespace, "acme-indexer"), what="the HPA back")
    wait_for(
        lambda: kube.get(SCALED_OBJECT, namespace, "acme-indexer") is None, what="the ScaledObject to go"
    )


def test_status_carries_real_stream_figures_from_redis(
    kube: KubeApi, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    stream = "face-processing-queue:{acme}"  # the tenant's own stream
    for index in range(5):
        redis_client.xadd(stream, {"message": f'{{"n": {index}}}'})
    redis_client.xgroup_create(stream, "pipeline", id="0")
    redis_client.xreadgroup("pipeline", "pod-a", {stream: ">"}, count=2)  # 2 pending, 3 still lagging
    redis_client.xadd(f"{stream}:dlq", {"reason": "invalid_json"})
    redis_client.xadd(f"{stream}:detected", {"message": "{}"})
    kube.create(facepipeline("acme", namespace, minimal_spec(redis_url)))

    def figures() -> dict[str, dict[str, Any]] | None:
        streams = {s["role"]: s for s in status(kube, namespace).get("streams", [])}
        return streams if streams.get("ingest", {}).get("pending") == 2 else None

    streams = wait_for(figures, what="stream figures in the status")
    assert streams["ingest"] == {
        "name": stream,
        "role": "ingest",
        "length": 5,
        "lag": 3,
        "pending": 2,
        "consumers": 1,
        "dlqLength": 1,
    }
    assert streams["detected"]["length"] == 1 and streams["detected"]["lag"] == 1  # no group yet: all waiting
    assert status(kube, namespace)["ingestLag"] == 5

    redis_client.xadd(stream, {"message": "{}"})  # the timer picks up new figures
    wait_for(lambda: status(kube, namespace).get("ingestLag") == 6, what="the resync to see the new entry")


def test_status_figures_follow_custom_stream_names(
    kube: KubeApi, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.xadd("faces-found", {"message": "{}"})
    redis_client.xadd("faces-found:dlq", {"reason": "invalid_crop"})
    spec = minimal_spec(redis_url)
    spec["settings"] = {"DETECTED_STREAM_NAME": "faces-found"}
    kube.create(facepipeline("acme", namespace, spec))

    def detected() -> dict[str, Any] | None:
        streams = {s["role"]: s for s in status(kube, namespace).get("streams", [])}
        return streams.get("detected")

    figures = wait_for(detected, what="the detected stream's figures")
    assert (figures["name"], figures["length"], figures["dlqLength"]) == ("faces-found", 1, 1)


def test_consumers_of_gone_pods_leave_the_groups_and_no_entry_is_dropped(
    kube: KubeApi, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    stream = tenant_stream_name("acme")
    for n in range(2):
        redis_client.xadd(stream, {"message": json.dumps({"n": n})})
    redis_client.xgroup_create(stream, "pipeline", id="0")
    # A pod that finished its work and went away, and one that died holding an entry.
    ((_, [(done_id, _)]),) = redis_client.xreadgroup("pipeline", "gone-pod", {stream: ">"}, count=1)
    redis_client.xack(stream, "pipeline", done_id)
    redis_client.xreadgroup("pipeline", "crashed-pod", {stream: ">"}, count=1)
    spec = minimal_spec(redis_url)
    spec["redis"]["staleConsumerSeconds"] = 1
    kube.create(facepipeline("acme", namespace, spec))

    def consumers() -> set[str]:
        return {c["name"] for c in redis_client.xinfo_consumers(stream, "pipeline")}

    wait_for(lambda: "gone-pod" not in consumers(), what="the idle consumer to be removed")
    # Its pending entry keeps the crashed pod's consumer until XAUTOCLAIM moves the entry on.
    assert consumers() == {"crashed-pod"}
    assert redis_client.xpending(stream, "pipeline")["pending"] == 1


def test_unreachable_redis_is_degraded_not_a_crash(kube: KubeApi, namespace: str) -> None:
    kube.create(facepipeline("acme", namespace, minimal_spec("redis://127.0.0.1:1/0")))
    wait_for_children(kube, namespace)  # the children do not depend on Redis
    degraded = wait_for(
        lambda: (
            condition(kube, namespace, "Degraded").get("reason") == "RedisUnreachable"
            and condition(kube, namespace, "Degraded")
        ),
        what="Degraded RedisUnreachable",
    )
    assert degraded["status"] == "True" and "Redis" in degraded["message"]
    assert status(kube, namespace)["phase"] == "Degraded"


def test_hand_deleted_and_hand_edited_children_are_put_back(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    kube.create(facepipeline("acme", namespace, minimal_spec(redis_url)))
    original = wait_for_children(kube, namespace)["embedder"]

    kube.delete(DEPLOYMENT, namespace, "acme-embedder")
    back = wait_for(
        lambda: (
            (d := kube.get(DEPLOYMENT, namespace, "acme-embedder"))
            and d["metadata"]["uid"] != original["metadata"]["uid"]
            and d
        ),
        what="the Deployment back",
    )
    assert template(back) == template(original)

    container = template(back)["spec"]["containers"][0]
    kube.patch(
        DEPLOYMENT,
        namespace,
        "acme-embedder",
        {"spec": {"template": {"spec": {"containers": [{**container, "image": "evil/image:latest"}]}}}},
    )
    wait_for(
        lambda: (
            template(kube.get(DEPLOYMENT, namespace, "acme-embedder"))["spec"]["containers"][0][  # type: ignore[arg-type]
                "image"
            ]
            == container["image"]
        ),
        what="the image put back",
    )

    kube.patch(CONFIG_MAP, namespace, "acme-config", {"data": {"DEDUP_MAX_HAMMING": "63", "EXTRA": "x"}})
    wait_for(
        lambda: (
            (kube.get(CONFIG_MAP, namespace, "acme-config") or {}).get("data", {}).get("DEDUP_MAX_HAMMING")
            == "8"
            and "EXTRA" not in kube.get(CONFIG_MAP, namespace, "acme-config")["data"]
        ),  # type: ignore[index]
        what="the ConfigMap put back",
    )


def test_a_second_reconcile_writes_nothing(
    kube: KubeApi, kubeconfig: Any, namespace: str, redis_url: str
) -> None:
    kube.create(facepipeline("acme", namespace, minimal_spec(redis_url)))
    wait_for_children(kube, namespace)
    wait_for(lambda: status(kube, namespace).get("components"), what="the first status")
    probe = KubeApi.from_environment(str(kubeconfig))
    try:
        versions = {
            c: kube.get(DEPLOYMENT, namespace, f"acme-{c}")["metadata"]["resourceVersion"]  # type: ignore[index]
            for c in COMPONENTS
        }
        observation = pipeline.reconcile(probe, namespace, "acme", read_streams=False, logger=LOGGER)
        assert observation is not None and not observation.changed
        assert probe.writes == 0
        # And the operator's own timer passes (every second here) change nothing either.
        timer_passes = RUNTIME.api.writes if RUNTIME.api else 0
        wait_for(
            lambda: RUNTIME.api is not None and RUNTIME.api.writes > timer_passes + 2, what="timer passes"
        )
        assert {
            c: kube.get(DEPLOYMENT, namespace, f"acme-{c}")["metadata"]["resourceVersion"]  # type: ignore[index]
            for c in COMPONENTS
        } == versions
    finally:
        probe.close()


def test_deployments_reporting_ready_make_the_pipeline_running(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    kube.create(facepipeline("acme", namespace, minimal_spec(redis_url)))
    deployments = wait_for_children(kube, namespace)
    # The emulator has no Deployment controller: play it, as kube-controller-manager would.
    for component, deployment in deployments.items():
        kube.patch(
            DEPLOYMENT,
            namespace,
            f"acme-{component}",
            {
                "status": {
                    "observedGeneration": deployment["metadata"]["generation"],
                    "replicas": 1,
                    "readyReplicas": 1,
                    "updatedReplicas": 1,
                    "availableReplicas": 1,
                }
            },
            subresource="status",
        )
    wait_for(lambda: status(kube, namespace).get("phase") == "Running", what="phase Running")
    assert status(kube, namespace)["readyComponents"] == "4/4"
    assert condition(kube, namespace, "Ready")["status"] == "True"


def test_invalid_spec_is_degraded_with_a_message_and_fixing_it_recovers(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    spec = minimal_spec(redis_url)
    spec["dedup"] = {"maxHamming": 99}  # the schema would refuse it; the emulator admits anything
    spec["settings"] = {"NOT_A_SETTING": "1"}
    kube.create(facepipeline("acme", namespace, spec))
    degraded = wait_for(
        lambda: (
            condition(kube, namespace, "Degraded").get("reason") == "InvalidSpec"
            and condition(kube, namespace, "Degraded")
        ),
        what="Degraded InvalidSpec",
    )
    assert "spec.dedup.maxHamming" in degraded["message"]
    assert status(kube, namespace)["phase"] == "Degraded"
    assert kube.list(DEPLOYMENT, namespace) == []

    kube.patch(FACE_PIPELINE, namespace, "acme", {"spec": {"dedup": {"maxHamming": 9}, "settings": None}})
    wait_for_children(kube, namespace)
    wait_for(lambda: condition(kube, namespace, "Degraded").get("status") == "False", what="recovery")


def test_purge_policy_purges_through_the_seam_and_retain_does_not(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    calls: list[tuple[Settings, str]] = []
    RUNTIME.purger = lambda settings, tenant: calls.append((settings, tenant))
    try:
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "minio", "namespace": namespace},
                "data": {
                    "accessKey": base64.b64encode(b"ak").decode(),
                    "secretKey": base64.b64encode(b"sk").decode(),
                },
            }
        )
        purge_spec = minimal_spec(redis_url, tenant="gone")
        purge_spec["deletionPolicy"] = "Purge"
        purge_spec["storage"]["secretRef"] = {"name": "minio"}
        kube.create(facepipeline("purged", namespace, purge_spec))
        kube.create(facepipeline("kept", namespace, minimal_spec(redis_url, tenant="kept")))
        wait_for_children(kube, namespace, "purged")
        wait_for_children(kube, namespace, "kept")
        purged = wait_for(
            lambda: (
                "facepipe.io/purge"
                in (
                    (kube.get(FACE_PIPELINE, namespace, "purged") or {}).get("metadata", {}).get("finalizers")
                    or []
                )
                and kube.get(FACE_PIPELINE, namespace, "purged")
            ),
            what="the purge finalizer",
        )
        assert purged
        kept = kube.get(FACE_PIPELINE, namespace, "kept")
        assert kept is not None and "facepipe.io/purge" not in (kept["metadata"].get("finalizers") or [])

        kube.delete(FACE_PIPELINE, namespace, "kept")
        wait_for(lambda: kube.get(FACE_PIPELINE, namespace, "kept") is None, what="kept to go")
        kube.delete(FACE_PIPELINE, namespace, "purged")
        wait_for(lambda: kube.get(FACE_PIPELINE, namespace, "purged") is None, what="purged to go")
        assert [tenant for _, tenant in calls] == ["gone"]
        settings = calls[0][0]
        assert (settings.minio_access_key, settings.minio_secret_key) == ("ak", "sk")  # read from the Secret
        # The pods' short name, as the operator (in another namespace) reaches it.
        assert settings.redis_url == redis_url and settings.qdrant_url == f"http://qdrant.{namespace}.svc:6333"
        # The cluster's garbage collector (emulated) removes the children with their owner.
        wait_for(lambda: kube.list(DEPLOYMENT, namespace) == [], what="children collected")
    finally:
        RUNTIME.purger = None


def test_purge_stops_the_tenants_pods_before_deleting_its_data(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    """Autoscalers deleted, Deployments at zero, every pod gone: only then the data."""
    seen_at_purge: list[dict[str, Any]] = []

    def replicas(component: str) -> int:
        return int(kube.get(DEPLOYMENT, namespace, f"acme-{component}")["spec"]["replicas"])  # type: ignore[index]

    def purger(settings: Settings, tenant: str) -> None:
        seen_at_purge.append(
            {
                "replicas": {c: replicas(c) for c in COMPONENTS},
                "pods": [p["metadata"]["name"] for p in kube.list(POD, namespace)],
                "scalers": kube.list(HPA, namespace) + kube.list(SCALED_OBJECT, namespace),
            }
        )

    RUNTIME.purger = purger
    try:
        spec = minimal_spec(redis_url)
        spec["deletionPolicy"] = "Purge"
        spec["components"] = {
            "embedder": {"autoscaling": {"enabled": True, "provider": "keda", "minReplicas": 0}},
            "opsApi": {"autoscaling": {"enabled": True}, "resources": {"requests": {"cpu": "100m"}}},
        }
        kube.create(facepipeline("acme", namespace, spec))
        deployments = wait_for_children(kube, namespace)
        wait_for(lambda: kube.get(SCALED_OBJECT, namespace, "acme-embedder"), what="the ScaledObject")
        wait_for(lambda: kube.get(HPA, namespace, "acme-ops-api"), what="the ops-api's HPA")
        # A running embedder pod, as the kubelet would report it (the emulator runs none).
        pod_labels = template(deployments["embedder"])["metadata"]["labels"]
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "acme-embedder-5d9c-x1", "namespace": namespace, "labels": pod_labels},
                "spec": {"containers": [{"name": "embedder", "image": "embedder:0.1.0"}]},
                "status": {"phase": "Running"},
            }
        )
        kube.delete(FACE_PIPELINE, namespace, "acme")
        waiting = wait_for(
            lambda: (
                "stopping the tenant's pods" in status(kube, namespace).get("message", "")
                and status(kube, namespace)
            ),
            what="the purge to wait for the pods",
        )
        assert "acme-embedder-5d9c-x1" in waiting["message"] and waiting["phase"] == "Terminating"
        assert seen_at_purge == []  # nothing deleted while a pod runs
        for component in COMPONENTS:
            wait_for(lambda c=component: replicas(c) == 0, what=f"{component} scaled to zero")
        assert kube.list(HPA, namespace) == [] and kube.list(SCALED_OBJECT, namespace) == []
        kube.delete(POD, namespace, "acme-embedder-5d9c-x1")  # its grace period is over
        wait_for(lambda: kube.get(FACE_PIPELINE, namespace, "acme") is None, what="the purge and deletion")
        assert seen_at_purge == [{"replicas": dict.fromkeys(COMPONENTS, 0), "pods": [], "scalers": []}]
    finally:
        RUNTIME.purger = None


def test_failed_purge_keeps_the_finalizer_and_says_why(kube: KubeApi, namespace: str, redis_url: str) -> None:
    attempts: list[str] = []
    failure_seen = threading.Event()

    def flaky(settings: Settings, tenant: str) -> None:
        attempts.append(tenant)
        if len(attempts) == 1:
            raise redis.ConnectionError("redis is down")
        failure_seen.wait(30)  # hold the retry until the test has seen the first failure reported

    RUNTIME.purger = flaky
    try:
        spec = minimal_spec(redis_url)
        spec["deletionPolicy"] = "Purge"
        kube.create(facepipeline("acme", namespace, spec))
        wait_for(
            lambda: (kube.get(FACE_PIPELINE, namespace, "acme") or {}).get("metadata", {}).get("finalizers"),
            what="the finalizer",
        )
        kube.delete(FACE_PIPELINE, namespace, "acme")
        degraded = wait_for(
            lambda: (
                condition(kube, namespace, "Degraded").get("reason") == "PurgeFailed"
                and condition(kube, namespace, "Degraded")
            ),
            what="Degraded PurgeFailed",
        )
        assert "redis is down" in degraded["message"]
        assert status(kube, namespace)["phase"] == "Terminating"
        assert kube.get(FACE_PIPELINE, namespace, "acme") is not None  # held by the finalizer
        failure_seen.set()
        wait_for(lambda: kube.get(FACE_PIPELINE, namespace, "acme") is None, what="deletion after the retry")
        assert attempts == ["acme", "acme"]
    finally:
        failure_seen.set()
        RUNTIME.purger = None


def test_keda_not_installed_is_reported(tmp_path: Any, redis_url: str) -> None:
    """A cluster without KEDA: the ScaledObject cannot be created; the status says so."""
    from operatorkit import CRD_PATH

    with EmulatorServer([CRD_PATH], keda=False) as bare:
        api = KubeApi.from_environment(str(write_kubeconfig(tmp_path / "kubeconfig", bare.url)))
        try:
            spec = minimal_spec(redis_url)
            spec["components"] = {"embedder": {"autoscaling": {"enabled": True, "provider": "keda"}}}
            api.create(facepipeline("acme", "ns", spec))
            observation = pipeline.reconcile(api, "ns", "acme", read_streams=False, logger=LOGGER)
            assert observation is not None and observation.apply_error
            assert "KEDA is not installed" in observation.apply_error
            degraded = next(
                c
                for c in api.get(FACE_PIPELINE, "ns", "acme")["status"]["conditions"]  # type: ignore[index]
                if c["type"] == "Degraded"
            )
            assert (degraded["status"], degraded["reason"]) == ("True", "ApplyFailed")
        finally:
            api.close()


def test_an_outdated_crd_is_reported_on_every_pipeline(tmp_path: Any, redis_url: str) -> None:
    """`helm upgrade` left the old CRD in place: the pipeline still runs; Degraded says so and how to fix."""
    import yaml
    from operatorkit import CRD_PATH

    from facepipe.operator.crd_check import CrdCheck

    old = yaml.safe_load(CRD_PATH.read_text())
    old["metadata"]["annotations"]["facepipe.io/schema-hash"] = "0123456789abcdef"  # an older release's
    old_file = tmp_path / "old-crd.yaml"
    old_file.write_text(yaml.safe_dump(old))
    previous_check = RUNTIME.crd_check
    RUNTIME.crd_check = CrdCheck(ttl_s=0)
    try:
        with EmulatorServer([old_file], keda=False) as cluster:
            api = KubeApi.from_environment(str(write_kubeconfig(tmp_path / "kubeconfig", cluster.url)))
            try:
                api.create(facepipeline("acme", "ns", minimal_spec(redis_url)))
                observation = pipeline.reconcile(api, "ns", "acme", read_streams=False, logger=LOGGER)
                assert observation is not None and observation.crd_error
                assert api.get(DEPLOYMENT, "ns", "acme-detector") is not None  # still applied
                degraded = next(
                    c
                    for c in api.get(FACE_PIPELINE, "ns", "acme")["status"]["conditions"]  # type: ignore[index]
                    if c["type"] == "Degraded"
                )
                assert (degraded["status"], degraded["reason"]) == ("True", "CRDOutdated")
                assert "0123456789abcdef" in degraded["message"] and "helm show crds" in degraded["message"]
            finally:
                api.close()
    finally:
        RUNTIME.crd_check = previous_check


def test_secret_sourced_redis_url_is_read_for_the_status(
    kube: KubeApi, namespace: str, redis_url: str
) -> None:
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis", "namespace": namespace},
            "data": {"url": base64.b64encode(redis_url.encode()).decode()},
        }
    )
    spec = minimal_spec(redis_url)
    spec["redis"] = {"urlSecretRef": {"name": "redis"}}
    kube.create(facepipeline("acme", namespace, spec))
    deployments = wait_for_children(kube, namespace)
    assert env_of(deployments["indexer"])["REDIS_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "redis", "key": "url"}
    }
    assert "REDIS_URL" not in kube.get(CONFIG_MAP, namespace, "acme-config")["data"]  # type: ignore[index]
    wait_for(
        lambda: len(status(kube, namespace).get("streams", [])) == 3, what="figures via the Secret's URL"
    )
    assert kube.get(SECRET, namespace, "redis") is not None


def test_purge_deletes_the_tenants_real_data_and_nothing_else(
    kube: KubeApi,
    namespace: str,
    base_env: dict[str, str],
    redis_client: redis.Redis,
    tmp_path: Any,
) -> None:
    """Purge end to end: real Redis dedup keys, real S3 objects (SeaweedFS), real vectors.

    The one stand-in: no Qdrant server exists here, so the purge reaches the vectors through
    qdrant-client's local mode at a path (same client API) instead of spec.vectorDb.url.
    """
    from facepipe.store.dedup import DedupCache, Owner
    from facepipe.store.deletion import purge_tenant
    from facepipe.store.storage import ObjectStore
    from facepipe.store.vectors import FacePoint, VectorIndex

    local_vectors = {"qdrant_url": "embedded", "qdrant_path": tmp_path / "qdrant"}
    env = {**base_env, "QDRANT_COLLECTION": f"faces-{namespace}"}
    settings = Settings.model_validate(env).model_copy(update=local_vectors)
    store = ObjectStore(settings)
    store.ensure_buckets()
    index = VectorIndex(settings)
    index.ensure_collection(4)
    dedup = DedupCache(redis_client, settings)
    for tenant in ("gone", "kept"):
        store.put_bytes(settings.bucket_crops, f"{tenant}/ab/{'ab' * 32}/face_0.jpg", b"jpeg")
        index.upsert([FacePoint(tenant, "ab" * 32, 0, [0.5, 0.5, 0.5, 0.5])])
        dedup.check_and_remember_batch([(tenant, [("0123456789abcdef", Owner("ab" * 32, 0))])])
        # Queued work with the tenant's data in it: its own streams and their DLQs.
        ingest = tenant_stream_name(tenant)
        redis_client.xadd(ingest, {"message": json.dumps({"tenant_id": tenant, "image_sha256": "ab" * 32})})
        detected = {"v": 1, "ingest": {"tenant_id": tenant}}
        redis_client.xadd(f"{ingest}:detected", {"message": json.dumps(detected)})
        redis_client.xadd(f"{ingest}:embedded:dlq", {"reason": "invalid_embedding", "payload": "{}"})
        redis_client.xgroup_create(ingest, "pipeline", id="0")
    index.close()  # local mode: one process per path, and the purge opens it next

    RUNTIME.purger = lambda resolved, tenant: purge_tenant(resolved.model_copy(update=local_vectors), tenant)
    try:
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "minio", "namespace": namespace},
                "stringData": {"accessKey": env["MINIO_ACCESS_KEY"], "secretKey": env["MINIO_SECRET_KEY"]},
            }
        )
        spec = minimal_spec(env["REDIS_URL"], tenant="gone")
        spec["deletionPolicy"] = "Purge"
        spec["storage"] = {
            "endpoint": env["MINIO_ENDPOINT"],
            "secretRef": {"name": "minio"},
            "buckets": {
                "raw": env["BUCKET_RAW"],
                "crops": env["BUCKET_CROPS"],
                "thumbs": env["BUCKET_THUMBS"],
                "metadata": env["BUCKET_METADATA"],
            },
        }
        spec["vectorDb"]["collection"] = env["QDRANT_COLLECTION"]
        kube.create(facepipeline("acme", namespace, spec))
        wait_for(
            lambda: (kube.get(FACE_PIPELINE, namespace, "acme") or {}).get("metadata", {}).get("finalizers"),
            what="the purge finalizer",
        )
        kube.delete(FACE_PIPELINE, namespace, "acme")
        wait_for(lambda: kube.get(FACE_PIPELINE, namespace, "acme") is None, timeout=60, what="the purge")
    finally:
        RUNTIME.purger = None

    assert list(store.list_keys(settings.bucket_crops, "gone/")) == []
    assert len(list(store.list_keys(settings.bucket_crops, "kept/"))) == 1
    assert redis_client.keys("dedup:t:{gone}:*") == []
    assert redis_client.keys("dedup:t:{kept}:*")
    assert redis_client.keys("face-processing-queue:{gone}*") == []  # streams, DLQs, groups: all gone
    assert sorted(redis_client.keys("face-processing-queue:{kept}*")) == [
        "face-processing-queue:{kept}",
        "face-processing-queue:{kept}:detected",
        "face-processing-queue:{kept}:embedded:dlq",
    ]
    index = VectorIndex(settings)
    try:
        assert (index.count("gone"), index.count("kept")) == (0, 1)
    finally:
        index.close()
