"""The API emulator behaves like an API server where Kopf and kubectl depend on it."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from operatorkit import wait_for

from facepipe.operator.kube import CONFIG_MAP, DEPLOYMENT, FACE_PIPELINE, KubeApi, KubeApiError
from facepipe.sim.emulator import EmulatorServer, label_selector_matches


def config_map(namespace: str, name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {"a": "1"},
    }


def watch_lines(url: str, path: str, limit: int, timeout: float = 5.0) -> Iterator[dict[str, Any]]:
    with urllib.request.urlopen(f"{url}{path}", timeout=timeout) as response:
        for count, line in enumerate(response):
            if line.strip():
                yield json.loads(line)
            if count >= limit:
                return


def test_create_assigns_identity_and_versions(kube: KubeApi, namespace: str) -> None:
    created = kube.create(config_map(namespace, "c1"))
    meta = created["metadata"]
    assert uuid.UUID(meta["uid"])
    assert (
        meta["generation"] == 1
        and int(meta["resourceVersion"]) > 0
        and meta["creationTimestamp"].endswith("Z")
    )
    with pytest.raises(KubeApiError) as caught:
        kube.create(config_map(namespace, "c1"))
    assert caught.value.status == 409


def test_no_op_patch_keeps_the_resource_version_and_a_change_bumps_it(kube: KubeApi, namespace: str) -> None:
    version = kube.create(config_map(namespace, "c1"))["metadata"]["resourceVersion"]
    same = kube.patch(CONFIG_MAP, namespace, "c1", {"data": {"a": "1"}})
    assert same["metadata"]["resourceVersion"] == version
    changed = kube.patch(CONFIG_MAP, namespace, "c1", {"data": {"a": "2"}})
    assert int(changed["metadata"]["resourceVersion"]) > int(version)
    assert changed["metadata"]["generation"] == 2  # something outside metadata changed
    relabelled = kube.patch(CONFIG_MAP, namespace, "c1", {"metadata": {"labels": {"x": "y"}}})
    assert relabelled["metadata"]["generation"] == 2


def test_stale_resource_version_is_a_conflict(kube: KubeApi, namespace: str) -> None:
    version = kube.create(config_map(namespace, "c1"))["metadata"]["resourceVersion"]
    kube.patch(CONFIG_MAP, namespace, "c1", {"data": {"a": "2"}})
    with pytest.raises(KubeApiError) as caught:
        kube.patch(
            CONFIG_MAP, namespace, "c1", {"metadata": {"resourceVersion": version}, "data": {"a": "3"}}
        )
    assert caught.value.status == 409


def test_lists_have_kind_api_version_and_filter_by_labels(kube: KubeApi, namespace: str) -> None:
    kube.create(config_map(namespace, "a", tier="x"))
    kube.create(config_map(namespace, "b", tier="y"))
    listing = kube.request("GET", CONFIG_MAP.path(namespace))
    assert listing["kind"] == "ConfigMapList" and listing["apiVersion"] == "v1"
    assert int(listing["metadata"]["resourceVersion"]) > 0
    assert [o["metadata"]["name"] for o in kube.list(CONFIG_MAP, namespace, "tier=x")] == ["a"]
    assert [o["metadata"]["name"] for o in kube.list(CONFIG_MAP, namespace, "tier in (x,y),tier!=x")] == ["b"]


def test_label_selector_forms() -> None:
    labels = {"a": "1", "b": "2"}
    assert label_selector_matches("a=1,b", labels)
    assert label_selector_matches("!c,a in (1, 3)", labels)
    assert not label_selector_matches("a notin (1)", labels)
    assert not label_selector_matches("a==2", labels)


def test_watch_from_a_resource_version_does_not_replay_old_objects(
    kube: KubeApi, kube_emulator: EmulatorServer, namespace: str
) -> None:
    kube.create(config_map(namespace, "old"))
    since = kube.request("GET", CONFIG_MAP.path(namespace))["metadata"]["resourceVersion"]
    kube.create(config_map(namespace, "new"))  # after the listing: must be delivered
    events = watch_lines(
        kube_emulator.url,
        f"/api/v1/namespaces/{namespace}/configmaps?watch=true&resourceVersion={since}",
        limit=1,
    )
    first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "new")


def test_status_subresource_writes_only_status(kube: KubeApi, namespace: str) -> None:
    body = {
        "apiVersion": "facepipe.io/v1alpha1",
        "kind": "FacePipeline",
        "metadata": {"name": "fp", "namespace": namespace},
        "spec": {"tenantId": "a"},
        "status": {"phase": "X"},
    }
    created = kube.create(body)
    assert "status" not in created  # dropped on create, as with a status subresource
    kube.patch(FACE_PIPELINE, namespace, "fp", {"spec": {"tenantId": "b"}, "status": {"phase": "Y"}})
    after_main = kube.get(FACE_PIPELINE, namespace, "fp")
    assert after_main is not None and after_main["spec"]["tenantId"] == "b" and "status" not in after_main
    kube.patch(
        FACE_PIPELINE,
        namespace,
        "fp",
        {"spec": {"tenantId": "c"}, "status": {"phase": "Z"}},
        subresource="status",
    )
    after_status = kube.get(FACE_PIPELINE, namespace, "fp")
    assert after_status is not None
    assert after_status["status"] == {"phase": "Z"} and after_status["spec"]["tenantId"] == "b"
    assert after_status["metadata"]["generation"] == 2  # only the spec change counted


def test_finalizers_hold_deletion_and_dependents_are_collected(kube: KubeApi, namespace: str) -> None:
    owner = kube.create(
        {
            **config_map(namespace, "owner"),
            "metadata": {"name": "owner", "namespace": namespace, "finalizers": ["test/hold"]},
        }
    )
    dependent = config_map(namespace, "dependent")
    dependent["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    kube.create(dependent)
    kube.delete(CONFIG_MAP, namespace, "owner")
    held = kube.get(CONFIG_MAP, namespace, "owner")
    assert held is not None and held["metadata"]["deletionTimestamp"]
    assert kube.get(CONFIG_MAP, namespace, "dependent") is not None
    kube.patch(CONFIG_MAP, namespace, "owner", {"metadata": {"finalizers": None}})
    assert kube.get(CONFIG_MAP, namespace, "owner") is None
    assert kube.get(CONFIG_MAP, namespace, "dependent") is None  # garbage-collected by owner uid


def test_only_the_newest_version_of_a_kind_is_served(kube: KubeApi) -> None:
    groups = kube.request("GET", "/apis/autoscaling")
    assert [v["version"] for v in groups["versions"]] == ["v2"]
    assert kube.request("GET", "/api/v1")["groupVersion"] == "v1"
    assert kube.list(DEPLOYMENT, "nowhere") == []


def test_a_dependent_created_after_its_owner_is_gone_is_collected(kube: KubeApi, namespace: str) -> None:
    owner = kube.create(config_map(namespace, "owner"))
    kube.delete(CONFIG_MAP, namespace, "owner")
    late = config_map(namespace, "late")
    late["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    ]
    assert kube.create(late)["metadata"]["name"] == "late"  # accepted, as by an API server
    wait_for(lambda: kube.get(CONFIG_MAP, namespace, "late") is None, what="the garbage collector")
