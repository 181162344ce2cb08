"""The operator applies its children server-side: a field the spec stops giving leaves the object.

On a real kube-apiserver (realapi.py: etcd + kube-apiserver, no controllers), since the emulator
has no server-side apply. The field-set logic itself (facepipe.operator.managed_fields) is
checked without a server first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from operatorkit import facepipeline, minimal_spec, wait_for

from facepipe.operator.apply import apply_children, parse_apply_mode, up_to_date
from facepipe.operator.builders import PipelineRef, build_children
from facepipe.operator.kube import CONFIG_MAP, DEPLOYMENT, FACE_PIPELINE, JOB, KubeApi
from facepipe.operator.managed_fields import FIELD_MANAGER, adopted, applied_entry, union, within
from facepipe.operator.packs import PackPlan, build_reembed_job
from facepipe.operator.validation import parse_spec

COMPONENTS = ("detector", "embedder", "indexer", "ops-api")


# --- the field sets, without a server ---------------------------------------------------------


def test_within_finds_a_field_the_desired_object_no_longer_gives() -> None:
    port = 'k:{"containerPort":9100,"protocol":"TCP"}'
    owned = {
        "f:spec": {
            "f:template": {
                "f:spec": {
                    "f:containers": {
                        'k:{"name":"detector"}': {".": {}, "f:image": {}, "f:ports": {port: {".": {}}}}
                    },
                    "f:tolerations": {},
                    "f:imagePullSecrets": {'k:{"name":"regcred"}': {".": {}, "f:name": {}}},
                }
            }
        }
    }
    container = {"name": "detector", "image": "x", "ports": [{"containerPort": 9100, "protocol": "TCP"}]}
    cuda = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [container],
                    "tolerations": [{}],
                    "imagePullSecrets": [{"name": "regcred"}],
                }
            }
        }
    }
    assert within(owned, cuda)
    cpu = {"spec": {"template": {"spec": {"containers": [container]}}}}
    assert not within(owned, cpu)
    moved = {**container, "ports": [{"containerPort": 9101, "protocol": "TCP"}]}
    other_port = {"spec": {"template": {"spec": {**cuda["spec"]["template"]["spec"], "containers": [moved]}}}}
    assert not within(owned, other_port)
    assert not within({"x:unknown": {}}, cuda)  # a doubt never skips an apply


def test_adopted_moves_the_legacy_managers_fields_into_the_operators_apply_entry() -> None:
    legacy = {
        "manager": "OpenAPI-Generator",
        "operation": "Update",
        "apiVersion": "apps/v1",
        "time": "2026-01-01T00:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:template": {"f:spec": {"f:tolerations": {}}}}},
    }
    controller = {
        "manager": "kube-controller-manager",
        "operation": "Update",
        "apiVersion": "apps/v1",
        "subresource": "status",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {}},
    }
    managed = adopted([legacy, controller], "apps/v1")
    assert managed is not None and controller in managed and legacy not in managed
    ours = applied_entry({"metadata": {"managedFields": managed}})
    assert ours is not None and ours["fieldsV1"] == legacy["fieldsV1"] and ours["time"] == legacy["time"]
    assert adopted([controller], "apps/v1") is None
    assert union({"f:a": {"f:b": {}}}, {"f:a": {"f:c": {}}, "f:d": {}}) == {
        "f:a": {"f:b": {}, "f:c": {}},
        "f:d": {},
    }


def test_the_apply_mode_is_server_side_unless_merge_is_asked_for() -> None:
    assert parse_apply_mode(None) == parse_apply_mode("") == "server-side"
    assert parse_apply_mode("merge") == "merge"
    with pytest.raises(ValueError, match="FACEPIPE_OPERATOR_APPLY"):
        parse_apply_mode("client-side")


# --- on a real API server ---------------------------------------------------------------------


def _owner(kube: KubeApi, namespace: str, name: str = "acme") -> PipelineRef:
    created = kube.create(facepipeline(name, namespace, minimal_spec("redis://redis:6379/0")))
    return PipelineRef(name, namespace, created["metadata"]["uid"])


def _children(owner: PipelineRef, **changes: Any) -> list[dict[str, Any]]:
    spec = minimal_spec("redis://redis:6379/0")
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = spec
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return build_children(owner, parse_spec(owner.name, spec))


def _pod_spec(kube: KubeApi, namespace: str, component: str) -> dict[str, Any]:
    deployment = kube.get(DEPLOYMENT, namespace, f"acme-{component}")
    assert deployment is not None
    return deployment["spec"]["template"]["spec"]


def _versions(kube: KubeApi, namespace: str) -> dict[str, str]:
    live = {c: kube.get(DEPLOYMENT, namespace, f"acme-{c}") or {} for c in COMPONENTS}
    return {c: obj["metadata"]["resourceVersion"] for c, obj in live.items()}


def _apply(
    kube: KubeApi, owner: PipelineRef, children: list[dict[str, Any]], mode: Any = "server-side"
) -> Any:
    return apply_children(kube, owner.namespace, owner.name, owner.uid, children, mode=mode)


def test_a_deployment_moved_from_cuda_to_cpu_loses_its_tolerations_and_pull_secrets(
    real_kube: KubeApi, real_namespace: str
) -> None:
    owner = _owner(real_kube, real_namespace)
    cuda = _children(owner, models__device="cuda", image__pullSecrets=["regcred", "mirror"])
    first = _apply(real_kube, owner, cuda)
    assert "Deployment/acme-detector" in first.created and not first.updated
    detector = _pod_spec(real_kube, real_namespace, "detector")
    assert [t["key"] for t in detector["tolerations"]] == ["nvidia.com/gpu"]
    assert detector["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror"}]
    assert "tolerations" not in _pod_spec(real_kube, real_namespace, "indexer")

    cpu = _children(owner, models__device="cpu", image__pullSecrets=[])
    second = _apply(real_kube, owner, cpu)
    # All four Deployments had pull secrets; the ConfigMap's INFERENCE_DEVICE is cpu now.
    assert set(second.updated) == {"ConfigMap/acme-config", *(f"Deployment/acme-{c}" for c in COMPONENTS)}
    for component in COMPONENTS:
        pod = _pod_spec(real_kube, real_namespace, component)
        assert "tolerations" not in pod and "imagePullSecrets" not in pod, component
        limits = pod["containers"][0].get("resources", {}).get("limits", {})
        assert "nvidia.com/gpu" not in limits, component
        assert not pod["containers"][0]["image"].endswith("-gpu"), component

    # Nothing left to change: a second pass writes nothing, and no version moves.
    versions = _versions(real_kube, real_namespace)
    writes = real_kube.writes
    third = _apply(real_kube, owner, cpu)
    assert not third.changed and real_kube.writes == writes
    assert {
        c: third.live[f"Deployment/acme-{c}"]["metadata"]["resourceVersion"] for c in COMPONENTS
    } == versions


def test_a_setting_that_leaves_the_spec_leaves_the_config_map_and_hand_edits_go_back(
    real_kube: KubeApi, real_namespace: str
) -> None:
    owner = _owner(real_kube, real_namespace)
    _apply(real_kube, owner, _children(owner, settings={"DET_SIZE": "512"}))
    assert real_kube.get(CONFIG_MAP, real_namespace, "acme-config")["data"]["DET_SIZE"] == "512"  # type: ignore[index]
    plain = _children(owner)
    _apply(real_kube, owner, plain)
    assert "DET_SIZE" not in real_kube.get(CONFIG_MAP, real_namespace, "acme-config")["data"]  # type: ignore[index]

    # A hand edit of a field the operator gives goes back (force); a field someone else added stays theirs.
    container = _pod_spec(real_kube, real_namespace, "embedder")["containers"][0]
    real_kube.patch(
        DEPLOYMENT,
        real_namespace,
        "acme-embedder",
        {
            "metadata": {"labels": {"team": "vision"}},
            "spec": {"template": {"spec": {"containers": [{**container, "image": "evil/image:latest"}]}}},
        },
    )
    fixed = _apply(real_kube, owner, plain)
    assert fixed.updated == ["Deployment/acme-embedder"]
    live = real_kube.get(DEPLOYMENT, real_namespace, "acme-embedder")
    assert (
        live is not None and live["spec"]["template"]["spec"]["containers"][0]["image"] == container["image"]
    )
    assert live["metadata"]["labels"]["team"] == "vision"
    assert up_to_date(live, next(c for c in plain if c["metadata"]["name"] == "acme-embedder"))


def test_children_the_merge_patching_operator_wrote_are_adopted(
    real_kube: KubeApi, real_namespace: str
) -> None:
    """After an upgrade from the operator that created and merge-patched: the same removal."""
    owner = _owner(real_kube, real_namespace)
    cuda = _children(owner, models__device="cuda", image__pullSecrets=["regcred"])
    _apply(real_kube, owner, cuda, mode="merge")  # the children as the earlier operator left them
    before = real_kube.get(DEPLOYMENT, real_namespace, "acme-detector")
    assert before is not None and applied_entry(before) is None

    _apply(real_kube, owner, _children(owner, models__device="cpu"))
    pod = _pod_spec(real_kube, real_namespace, "detector")
    assert "tolerations" not in pod and "imagePullSecrets" not in pod
    after = real_kube.get(DEPLOYMENT, real_namespace, "acme-detector")
    assert after is not None and applied_entry(after) is not None
    managers = {
        (e["manager"], e["operation"]) for e in after["metadata"]["managedFields"] if not e.get("subresource")
    }
    assert managers == {(FIELD_MANAGER, "Apply")}


def test_replicas_handed_to_an_autoscaler_keep_their_count(real_kube: KubeApi, real_namespace: str) -> None:
    owner = _owner(real_kube, real_namespace)
    _apply(real_kube, owner, _children(owner, components__indexer={"replicas": 3}))
    scaled = _children(owner, components__indexer={"replicas": 3, "autoscaling": {"enabled": True}})
    _apply(real_kube, owner, scaled)
    indexer = real_kube.get(DEPLOYMENT, real_namespace, "acme-indexer")
    assert indexer is not None and indexer["spec"]["replicas"] == 3  # not the default 1 meanwhile

    # The HPA scales through /scale: from then on spec.replicas is its own, and stays.
    real_kube.patch(
        DEPLOYMENT, real_namespace, "acme-indexer", {"spec": {"replicas": 5}}, subresource="scale"
    )
    _apply(real_kube, owner, scaled)
    writes = real_kube.writes
    again = _apply(real_kube, owner, scaled)
    assert real_kube.writes == writes and not again.changed
    indexer = real_kube.get(DEPLOYMENT, real_namespace, "acme-indexer")
    assert indexer is not None and indexer["spec"]["replicas"] == 5


def test_a_backfill_job_is_applied_once_and_deleted_when_no_longer_wanted(
    real_kube: KubeApi, real_namespace: str
) -> None:
    """A Job's template is immutable and the API server adds to it: a second pass must leave it be."""
    owner = _owner(real_kube, real_namespace)
    spec = parse_spec(owner.name, minimal_spec("redis://redis:6379/0"))
    plan = PackPlan("opencv_yunet_sface", "buffalo_sc", "buffalo_sc", migrating=True, record=None)
    job = build_reembed_job(owner, spec, plan)
    children = [*build_children(owner, spec), job]
    assert f"Job/{job['metadata']['name']}" in _apply(real_kube, owner, children).created
    writes = real_kube.writes
    assert not _apply(real_kube, owner, children).changed and real_kube.writes == writes
    done = _apply(real_kube, owner, build_children(owner, spec))
    assert done.deleted == [f"Job/{job['metadata']['name']}"]
    assert real_kube.get(JOB, real_namespace, job["metadata"]["name"]) is None


def test_the_operator_removes_tolerations_and_pull_secrets_when_the_pipeline_moves_to_cpu(
    real_apiserver: Any, real_kube: KubeApi, real_namespace: str, redis_url: str, tmp_path: Path
) -> None:
    """The whole operator (python -m facepipe.operator) against the real API server."""
    spec = minimal_spec(redis_url)
    spec["models"] = {"device": "cuda"}
    spec["image"] = {"pullSecrets": ["regcred"]}
    real_kube.create(facepipeline("acme", real_namespace, spec))
    env = {
        **os.environ,
        "KUBECONFIG": str(real_apiserver.kubeconfig),
        "FACEPIPE_OPERATOR_APPLY": "server-side",
        "FACEPIPE_OPERATOR_RESYNC_SECONDS": "1",
    }
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facepipe.operator", "--namespace", real_namespace],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def pod_spec(component: str) -> dict[str, Any] | None:
            assert proc.poll() is None, f"the operator exited:\n{log.read_text()[-3000:]}"
            deployment = real_kube.get(DEPLOYMENT, real_namespace, f"acme-{component}")
            return deployment["spec"]["template"]["spec"] if deployment else None

        wait_for(
            lambda: (pod_spec("detector") or {}).get("tolerations"), timeout=90, what="the detector on cuda"
        )
        assert pod_spec("detector")["imagePullSecrets"] == [{"name": "regcred"}]  # type: ignore[index]

        real_kube.patch(
            FACE_PIPELINE,
            real_namespace,
            "acme",
            {"spec": {"models": {"device": "cpu"}, "image": {"pullSecrets": []}}},
        )
        wait_for(
            lambda: all(
                (pod := pod_spec(c)) is not None
                and "tolerations" not in pod
                and "imagePullSecrets" not in pod
                for c in COMPONENTS
            ),
            timeout=60,
            what="every Deployment without tolerations and pull secrets",
        )
        # Its resync passes (every second) change nothing more.
        versions = _versions(real_kube, real_namespace)
        time.sleep(3)
        assert _versions(real_kube, real_namespace) == versions
        assert proc.poll() is None, log.read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
