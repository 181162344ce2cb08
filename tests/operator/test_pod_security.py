"""Every pod the operator creates is admitted under Pod Security "restricted" and runs as the image's user."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubekit import restricted_violations
from operatorkit import EXAMPLES, minimal_spec

from facepipe.operator.builders import PipelineRef, build_children
from facepipe.operator.validation import parse_spec

OWNER = PipelineRef("acme", "tenants", "uid-1")
SPECS = {
    "minimal": minimal_spec("redis://redis:6379/0"),
    "full example": yaml.safe_load((EXAMPLES / "facepipeline-full.yaml").read_text())["spec"],
    "writable claim": {
        **minimal_spec("redis://redis:6379/0"),
        "models": {"volume": {"claimName": "models", "readOnly": False}},
    },
}


def pods(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    children = build_children(OWNER, parse_spec("acme", raw))
    deployments = [c for c in children if c["kind"] == "Deployment"]
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in deployments}


@pytest.mark.parametrize("variant", list(SPECS))
def test_every_pod_passes_the_restricted_profile(variant: str) -> None:
    found = pods(SPECS[variant])
    assert len(found) == 4
    for name, pod in found.items():
        assert restricted_violations(pod) == [], name


@pytest.mark.parametrize("variant", list(SPECS))
def test_pods_run_as_the_images_user_with_a_read_only_root_and_a_writable_tmp_and_home(variant: str) -> None:
    for name, pod in pods(SPECS[variant]).items():
        context = pod["securityContext"]
        ids = (context["runAsUser"], context["runAsGroup"], context["fsGroup"])
        assert ids == (10001, 10001, 10001), name  # the Dockerfile's USER 10001:10001
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["home"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/tmp"]["name"] == "tmp"
            assert mounts["/home/app"]["name"] == "home"  # the image's HOME: onnxruntime writes there


def _all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return pod.get("initContainers", []) + pod["containers"]


BREAKS = {
    "root user": lambda pod: pod["securityContext"].update(runAsUser=0),
    "no runAsNonRoot": lambda pod: [
        pod["securityContext"].pop("runAsNonRoot"),
        *[c["securityContext"].pop("runAsNonRoot") for c in _all_containers(pod)],
    ],
    "escalation": lambda pod: pod["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
    "capabilities kept": lambda pod: pod["initContainers"][0]["securityContext"].update(capabilities={}),
    "added capability": lambda pod: pod["containers"][0]["securityContext"].update(
        capabilities={"drop": ["ALL"], "add": ["NET_ADMIN"]}
    ),
    "no seccomp": lambda pod: pod["securityContext"].pop("seccompProfile"),
    "hostPath": lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
    "hostNetwork": lambda pod: pod.update(hostNetwork=True),
    "hostPort": lambda pod: pod["containers"][0]["ports"][0].update(hostPort=9100),
    "privileged": lambda pod: pod["containers"][0]["securityContext"].update(privileged=True),
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_the_checker_refuses_what_restricted_refuses(case: str) -> None:
    pod = copy.deepcopy(pods(SPECS["minimal"])["acme-detector"])
    BREAKS[case](pod)
    assert restricted_violations(pod), case


def test_the_pods_user_and_home_are_the_images() -> None:
    from operatorkit import REPO_ROOT

    from facepipe.operator.pod import APP_HOME, APP_UID
    from facepipe.sim.images import load_recipes

    for image, recipe in load_recipes(REPO_ROOT).items():
        assert recipe.env["HOME"] == APP_HOME, image
        assert recipe.user == f"{APP_UID}:{APP_UID}", image
