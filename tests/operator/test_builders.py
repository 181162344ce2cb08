"""The pure builders: what one FacePipeline turns into, checked without any API server."""

from __future__ import annotations

import copy
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from operatorkit import EXAMPLES, minimal_spec

from facepipe.core.settings import Settings
from facepipe.operator.builders import (
    PipelineRef,
    build_children,
    build_config_map,
    build_deployment,
    config_hash,
    keda_redis_address,
    stream_names,
)
from facepipe.operator.constants import COMPONENTS, WORKERS
from facepipe.operator.envmap import MANAGED, READERS, primary_env_names, reads
from facepipe.operator.validation import parse_spec

OWNER = PipelineRef(name="acme", namespace="tenants", uid="0b7c6a4e-1111-4222-8333-944445555666")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def spec_of(raw: dict[str, Any]) -> Any:
    return parse_spec(OWNER.name, raw)


def example(name: str) -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / name).read_text())


def with_changes(raw: dict[str, Any], **paths: Any) -> dict[str, Any]:
    """A deep copy of ``raw`` with dotted paths (``dedup__maxHamming``) set."""
    out = copy.deepcopy(raw)
    for dotted, value in paths.items():
        node = out
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def children_by_ref(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in children}


VARIANTS = {
    "minimal": minimal_spec("redis://redis:6379/0"),
    "full example": example("facepipeline-full.yaml")["spec"],
    "cuda + keda everywhere": with_changes(
        minimal_spec("rediss://redis.cache:6380/2"),
        models__device="cuda",
        components__detector={"autoscaling": {"enabled": True, "provider": "keda", "minReplicas": 0}},
        components__opsApi={
            "resources": {"requests": {"cpu": "100m"}},
            "autoscaling": {"enabled": True, "provider": "keda"},
        },
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_child_validates_strictly_against_kubernetes_1_33(variant: str) -> None:
    children = build_children(OWNER, spec_of(VARIANTS[variant]))
    validated = 0
    for child in children:
        if child["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: no bundled schema (checked field by field in other tests)
        kubernetes_validate.validate(child, "1.33.0", strict=True)
        validated += 1
    assert validated >= 7  # ConfigMap, 4 Deployments, 2 Services at least


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_child_is_owned_labelled_and_selectable(variant: str) -> None:
    children = build_children(OWNER, spec_of(VARIANTS[variant]))
    for child in children:
        refs = child["metadata"]["ownerReferences"]
        assert refs == [
            {
                "apiVersion": "facepipe.io/v1alpha1",
                "kind": "FacePipeline",
                "name": "acme",
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert child["metadata"]["namespace"] == "tenants"
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "facepipe-operator"
        # Every label value and selector value must be a valid Kubernetes label value.
        for text in _label_values(child):
            assert LABEL_VALUE.match(text) and len(text) <= 63, (child["metadata"]["name"], text)


def _label_values(obj: Any) -> list[str]:
    found: list[str] = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("labels", "matchLabels") and isinstance(value, dict):
                found += [str(v) for v in value.values()]
            elif (
                key == "selector"
                and isinstance(value, dict)
                and all(isinstance(v, str) for v in value.values())
            ):
                found += list(value.values())
            else:
                found += _label_values(value)
    elif isinstance(obj, list):
        for item in obj:
            found += _label_values(item)
    return found


def test_one_pipeline_becomes_config_map_four_deployments_services_and_autoscalers() -> None:
    spec = spec_of(example("facepipeline-full.yaml")["spec"])
    refs = sorted(children_by_ref(build_children(OWNER, spec)))
    assert refs == sorted(
        [
            "ConfigMap/acme-config",
            "Deployment/acme-detector",
            "Deployment/acme-embedder",
            "Deployment/acme-indexer",
            "Deployment/acme-ops-api",
            "Service/acme-ops-api",
            "Service/acme-workers",
            "ScaledObject/acme-detector",
            "ScaledObject/acme-embedder",
            "HorizontalPodAutoscaler/acme-ops-api",
        ]
    )


def test_config_map_holds_the_runbook_names_with_the_spec_values() -> None:
    raw = with_changes(
        minimal_spec("redis://redis:6379/0"),
        dedup__maxHamming=12,
        dedup__ttlSeconds=1800,
        dedup__enabled=False,
        settings={"DET_SIZE": "512"},
    )
    data = build_config_map(OWNER, spec_of(raw))["data"]
    assert data["REDIS_URL"] == "redis://redis:6379/0"
    assert data["REDIS_STREAM_NAME"] == "face-processing-queue:{acme}"  # the tenant's own stream
    assert data["REDIS_GROUP_NAME"] == "pipeline"
    assert data["DEDUP_MAX_HAMMING"] == "12"
    assert data["DEDUP_TTL_SECONDS"] == "1800"
    assert data["ENABLE_GLOBAL_DEDUP"] == "false"
    assert data["MINIO_ENDPOINT"] == "minio:9000"
    assert data["QDRANT_URL"] == "http://qdrant:6333"
    assert data["QDRANT_COLLECTION"] == "faces_v1"
    assert data["DET_SIZE"] == "512"
    # Every key is a real setting, and what the services would read back is what the spec says.
    assert set(data) <= set(primary_env_names())
    settings = Settings.model_validate(data)
    assert (settings.dedup_max_hamming, settings.dedup_ttl_seconds, settings.enable_global_dedup) == (
        12,
        1800,
        False,
    )
    assert settings.detected_stream == "face-processing-queue:{acme}:detected"


def test_workers_get_downward_api_consumer_names_metrics_port_and_a_grace_period() -> None:
    spec = spec_of(minimal_spec("redis://redis:6379/0"))
    for component in WORKERS:
        deployment = build_deployment(OWNER, spec, component)
        pod = deployment["spec"]["template"]["spec"]
        env = env_of(deployment)
        assert env["REDIS_CONSUMER_NAME"]["valueFrom"] == {
            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}
        }
        assert env["METRICS_PORT"]["value"] == "9100"
        assert pod["containers"][0]["ports"] == [
            {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}
        ]
        assert pod["terminationGracePeriodSeconds"] == 120
        assert pod["containers"][0]["command"] == ["python", "-m", f"facepipe.{component}"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
        assert labels["facepipe.io/tenant"] == "acme"
        # Every ConfigMap-sourced variable points at this pipeline's ConfigMap.
        for entry in env.values():
            if "configMapKeyRef" in entry.get("valueFrom", {}):
                assert entry["valueFrom"]["configMapKeyRef"] == {"name": "acme-config", "key": entry["name"]}


def test_consumer_name_prefix_is_followed_by_the_pod_name() -> None:
    spec = spec_of(with_changes(minimal_spec("redis://redis:6379/0"), redis__consumerNamePrefix="acme-"))
    env_list = build_deployment(OWNER, spec, "detector")["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [entry["name"] for entry in env_list]
    assert env_of(build_deployment(OWNER, spec, "detector"))["REDIS_CONSUMER_NAME"] == {
        "name": "REDIS_CONSUMER_NAME",
        "value": "acme-$(POD_NAME)",
    }
    # $(POD_NAME) expands only when POD_NAME is defined earlier in the list.
    assert names.index("POD_NAME") < names.index("REDIS_CONSUMER_NAME")
    assert (
        env_of(build_deployment(OWNER, spec, "detector"))["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
        == "metadata.name"
    )


def test_ops_api_has_readiness_on_ready_a_service_and_no_consumer_name() -> None:
    spec = spec_of(minimal_spec("redis://redis:6379/0"))
    children = children_by_ref(build_children(OWNER, spec))
    deployment = children["Deployment/acme-ops-api"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8001, "protocol": "TCP"}]
    env = env_of(deployment)
    assert env["OPS_API_HOST"]["value"] == "0.0.0.0" and env["OPS_API_PORT"]["value"] == "8001"
    assert "REDIS_CONSUMER_NAME" not in env
    service = children["Service/acme-ops-api"]
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/instance": "acme",
        "app.kubernetes.io/component": "ops-api",
    }
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    workers = children["Service/acme-workers"]
    assert workers["spec"]["clusterIP"] == "None" and workers["spec"]["ports"][0]["port"] == 9100


def test_secrets_are_referenced_never_copied() -> None:
    spec = spec_of(example("facepipeline-full.yaml")["spec"])
    data = build_config_map(OWNER, spec)["data"]
    assert "REDIS_URL" not in data and "MINIO_SECRET_KEY" not in data and "QDRANT_API_KEY" not in data
    env = env_of(build_deployment(OWNER, spec, "indexer"))
    assert env["REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "acme-redis", "key": "url"}}
    assert env["MINIO_SECRET_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "acme-minio", "key": "secretKey"}
    }
    assert env["QDRANT_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "acme-qdrant", "key": "apiKey"}}
    ops_env = env_of(build_deployment(OWNER, spec, "ops-api"))
    assert ops_env["OPS_API_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "acme-ops-api", "key": "token"}}
    assert "QDRANT_API_KEY" not in env_of(build_deployment(OWNER, spec, "detector"))  # it never reads it


def test_each_component_reads_exactly_its_settings() -> None:
    spec = spec_of(minimal_spec("redis://redis:6379/0"))
    for component in COMPONENTS:
        env = env_of(build_deployment(OWNER, spec, component))
        for name in build_config_map(OWNER, spec)["data"]:
            assert (name in env) == reads(component, name), (component, name)
    embedder = env_of(build_deployment(OWNER, spec, "embedder"))
    assert "DEDUP_MAX_HAMMING" not in embedder and "MINIO_ENDPOINT" not in embedder
    assert "MODEL_PACK" in embedder


def test_every_setting_of_the_services_has_its_readers_declared() -> None:
    names = set(primary_env_names())
    assert names == set(READERS), f"add to facepipe.operator.envmap: {sorted(names ^ set(READERS))}"
    assert set(MANAGED) <= names


def _hashes(raw: dict[str, Any]) -> dict[str, str]:
    spec = spec_of(raw)
    return {component: config_hash(spec, component) for component in COMPONENTS}


def test_max_hamming_change_rolls_only_the_components_that_read_it() -> None:
    base = minimal_spec("redis://redis:6379/0")
    before = _hashes(base)
    after = _hashes(with_changes(base, dedup__maxHamming=12))
    changed = {c for c in COMPONENTS if before[c] != after[c]}
    assert changed == {"indexer", "ops-api"}  # the detector does not read dedup settings
    spec_before, spec_after = spec_of(base), spec_of(with_changes(base, dedup__maxHamming=12))
    for component in COMPONENTS:
        template_before = build_deployment(OWNER, spec_before, component)["spec"]["template"]
        template_after = build_deployment(OWNER, spec_after, component)["spec"]["template"]
        assert (template_before != template_after) == (component in changed)


def test_model_pack_change_rolls_every_component() -> None:
    """The indexer checks the pack of every vector and sizes the collection by it: it rolls too."""
    base = minimal_spec("redis://redis:6379/0")
    before, after = _hashes(base), _hashes(with_changes(base, models__pack="opencv_yunet_sface"))
    assert {c for c in COMPONENTS if before[c] != after[c]} == set(COMPONENTS)
    spec = spec_of(with_changes(base, models__pack="opencv_yunet_sface"))
    assert env_of(build_deployment(OWNER, spec, "indexer"))["MODEL_PACK"]["valueFrom"] == {
        "configMapKeyRef": {"name": "acme-config", "key": "MODEL_PACK"}
    }


def test_one_components_batch_size_rolls_only_that_component() -> None:
    base = minimal_spec("redis://redis:6379/0")
    changed = with_changes(base, components__embedder={"batchSize": 64})
    for component in COMPONENTS:
        old = build_deployment(OWNER, spec_of(base), component)["spec"]["template"]
        new = build_deployment(OWNER, spec_of(changed), component)["spec"]["template"]
        assert (old != new) == (component == "embedder")
    assert env_of(build_deployment(OWNER, spec_of(changed), "embedder"))["WORKER_BATCH_SIZE"]["value"] == "64"


def test_restart_at_sets_restarted_at_on_every_pod_template() -> None:
    spec = spec_of(with_changes(minimal_spec("redis://redis:6379/0"), restartAt="2026-11-28T12:00:00Z"))
    for component in COMPONENTS:
        annotations = build_deployment(OWNER, spec, component)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["kubectl.kubernetes.io/restartedAt"] == "2026-11-28T12:00:00Z"
        assert re.fullmatch(r"[0-9a-f]{16}", annotations["facepipe.io/config-hash"])


def test_cuda_gives_detector_and_embedder_a_gpu_and_keeps_ops_api_on_cpu() -> None:
    spec = spec_of(with_changes(minimal_spec("redis://redis:6379/0"), models__device="cuda"))
    assert build_config_map(OWNER, spec)["data"]["INFERENCE_DEVICE"] == "cuda"
    for component in COMPONENTS:
        pod = build_deployment(OWNER, spec, component)["spec"]["template"]["spec"]
        limits = pod["containers"][0].get("resources", {}).get("limits", {})
        if component in ("detector", "embedder"):
            assert limits["nvidia.com/gpu"] == 1
            assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in pod
    assert env_of(build_deployment(OWNER, spec, "ops-api"))["INFERENCE_DEVICE"] == {
        "name": "INFERENCE_DEVICE",
        "value": "cpu",
    }
    cpu = spec_of(minimal_spec("redis://redis:6379/0"))
    assert (
        "resources"
        not in build_deployment(OWNER, cpu, "detector")["spec"]["template"]["spec"]["containers"][0]
    )


def volumes_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {volume["name"]: volume for volume in pod.get("volumes", [])}


def test_models_volume_is_the_claim_when_given_and_only_verified() -> None:
    spec = spec_of(example("facepipeline-full.yaml")["spec"])
    pod = build_deployment(OWNER, spec, "detector")["spec"]["template"]["spec"]
    assert volumes_of(pod)["models"] == {
        "name": "models",
        "persistentVolumeClaim": {"claimName": "facepipe-models", "readOnly": True},
    }
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/models", "readOnly": True}
    (init,) = pod["initContainers"]
    # A read-only (pre-filled) claim: the init container checks, never downloads.
    assert init["command"] == [
        "python",
        "-m",
        "facepipe.vision.models.fetch",
        "--pack",
        "buffalo_l",
        "--dir",
        "/models",
        "--verify",
    ]
    assert "models" not in volumes_of(build_deployment(OWNER, spec, "indexer")["spec"]["template"]["spec"])


def test_without_a_claim_each_model_pod_fetches_its_pack_into_an_emptydir() -> None:
    spec = spec_of(
        with_changes(minimal_spec("redis://redis:6379/0"), models__indexUrl="https://mirror/simple")
    )
    for component in COMPONENTS:
        pod = build_deployment(OWNER, spec, component)["spec"]["template"]["spec"]
        if component == "indexer":
            assert "initContainers" not in pod and "models" not in volumes_of(pod)
            continue
        assert volumes_of(pod)["models"] == {"name": "models", "emptyDir": {}}
        (init,) = pod["initContainers"]
        assert init["image"] == pod["containers"][0]["image"]  # the image that runs the models fetches them
        assert init["command"] == [
            "python",
            "-m",
            "facepipe.vision.models.fetch",
            "--pack",
            "buffalo_sc",
            "--dir",
            "/models",
        ]
        assert init["env"] == [{"name": "MODELS_INDEX_URL", "value": "https://mirror/simple"}]
        init_mounts = {m["name"]: m for m in init["volumeMounts"]}
        assert init_mounts["models"]["readOnly"] is False  # the fetch writes; the component only reads
        main_mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert main_mounts["models"]["readOnly"] is True
        env = env_of(build_deployment(OWNER, spec, component))
        assert env["MODELS_DIR"]["valueFrom"]["configMapKeyRef"]["key"] == "MODELS_DIR"
    assert build_config_map(OWNER, spec)["data"]["MODELS_DIR"] == "/models"


def test_a_pack_the_product_cannot_fetch_needs_a_claim() -> None:
    from facepipe.operator.validation import SpecError

    with pytest.raises(SpecError, match=r"spec\.models\.pack buffalo_l: .*claimName"):
        spec_of(with_changes(minimal_spec("redis://redis:6379/0"), models__pack="buffalo_l"))
    spec_of(
        with_changes(
            minimal_spec("redis://redis:6379/0"), models={"pack": "buffalo_l", "volume": {"claimName": "m"}}
        )
    )


def test_hpa_scales_a_worker_on_its_input_streams_backlog() -> None:
    raw = with_changes(
        minimal_spec("redis://redis:6379/0"),
        components__embedder={
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6, "targetLagPerReplica": 50}
        },
    )
    children = children_by_ref(build_children(OWNER, spec_of(raw)))
    hpa = children["HorizontalPodAutoscaler/acme-embedder"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "acme-embedder",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "External",
            "external": {
                "metric": {
                    "name": "facepipe_stream_backlog",
                    "selector": {"matchLabels": {"stream_role": "detected", "tenant": "acme"}},
                },
                "target": {"type": "AverageValue", "averageValue": "50"},
            },
        }
    ]
    # The autoscaler owns the replica count; the Deployment does not state one.
    assert "replicas" not in children["Deployment/acme-embedder"]["spec"]
    assert children["Deployment/acme-detector"]["spec"]["replicas"] == 1
    assert not any(ref.startswith("ScaledObject/") for ref in children)


def test_keda_provider_gives_a_scaled_object_and_no_hpa() -> None:
    raw = with_changes(
        minimal_spec("rediss://cache.svc:6380/3"),
        components__indexer={
            "autoscaling": {"enabled": True, "provider": "keda", "minReplicas": 0, "targetLagPerReplica": 25}
        },
    )
    children = children_by_ref(build_children(OWNER, spec_of(raw)))
    assert not any(ref.startswith("HorizontalPodAutoscaler/") for ref in children)
    scaled = children["ScaledObject/acme-indexer"]
    assert scaled["spec"]["scaleTargetRef"] == {"name": "acme-indexer"}
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (0, 10)
    # The backlog is lag + pending, and KEDA's scaler counts one of them per trigger: one each.
    assert scaled["spec"]["triggers"] == [
        {
            "type": "redis-streams",
            "metadata": {
                "stream": "face-processing-queue:{acme}:embedded",
                "consumerGroup": "pipeline",
                count: "25",
                "address": "cache.svc:6380",
                "databaseIndex": "3",
                "enableTLS": "true",
            },
        }
        for count in ("lagCount", "pendingEntriesCount")
    ]


def test_keda_with_credentials_uses_the_trigger_authentication() -> None:
    spec = spec_of(example("facepipeline-full.yaml")["spec"])
    scaled = children_by_ref(build_children(OWNER, spec))["ScaledObject/acme-embedder"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["authenticationRef"] == {"name": "acme-redis-keda"}
        assert "address" not in trigger["metadata"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("unix:///tmp/redis.sock", "TCP Redis address"),
        ("redis://:secret@redis:6379/0", "credentials"),
        ("redis://redis:6379/zero", "not a number"),
    ],
)
def test_keda_redis_address_refuses_what_keda_cannot_use(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        keda_redis_address(url)


def test_ops_api_autoscales_on_cpu() -> None:
    spec = spec_of(example("facepipeline-full.yaml")["spec"])
    hpa = children_by_ref(build_children(OWNER, spec))["HorizontalPodAutoscaler/acme-ops-api"]
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 75}},
        }
    ]


def test_builders_are_deterministic() -> None:
    spec = spec_of(example("facepipeline-full.yaml")["spec"])
    assert build_children(OWNER, spec) == build_children(OWNER, spec)


def test_custom_stream_names_reach_the_autoscalers_from_the_same_settings_as_the_pods() -> None:
    raw = with_changes(
        minimal_spec("redis://redis:6379/0"),
        settings={"DETECTED_STREAM_NAME": "faces-found", "EMBEDDED_STREAM_NAME": "vectors-made"},
        components__embedder={"autoscaling": {"enabled": True, "provider": "keda", "minReplicas": 0}},
        components__indexer={"autoscaling": {"enabled": True, "provider": "keda"}},
    )
    spec = spec_of(raw)
    children = children_by_ref(build_children(OWNER, spec))

    def trigger_stream(component: str) -> str:
        return str(children[f"ScaledObject/acme-{component}"]["spec"]["triggers"][0]["metadata"]["stream"])

    assert (trigger_stream("embedder"), trigger_stream("indexer")) == ("faces-found", "vectors-made")
    # What the pods read is what the autoscalers watch.
    pods = Settings.model_validate(build_config_map(OWNER, spec)["data"])
    assert (
        pods.streams_by_role
        == stream_names(spec)
        == {
            "ingest": "face-processing-queue:{acme}",
            "detected": "faces-found",
            "embedded": "vectors-made",
        }
    )


def test_workers_are_probed_on_their_metrics_port_and_ops_api_on_its_own() -> None:
    from facepipe.core.metrics import HEALTH_PATH, READY_PATH

    spec = spec_of(minimal_spec("redis://redis:6379/0"))
    for component in WORKERS:
        container = build_deployment(OWNER, spec, component)["spec"]["template"]["spec"]["containers"][0]
        assert container["startupProbe"]["httpGet"] == {"path": READY_PATH, "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": HEALTH_PATH, "port": "metrics"}
        # Model loading may take minutes: liveness only applies once the startup probe passed.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    ops = build_deployment(OWNER, spec, "ops-api")["spec"]["template"]["spec"]["containers"][0]
    assert ops["livenessProbe"]["httpGet"] == {"path": "/", "port": "http"}
