"""The rules the kubelet and the API server apply, as pure functions (no pod runs here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facepipe.sim import podenv, podspec
from facepipe.sim.images import load_recipes
from facepipe.sim.strategic import strategic_merge
from facepipe.sim.workloads import resolve_fraction, selector_matches

REPO = Path(__file__).resolve().parents[2]
INDEXER = load_recipes(REPO)["ghcr.io/face-pipeline/indexer"]


def pod(**spec: object) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"containers": [{"name": "c"}], **spec},
    }


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        ({}, [*INDEXER.entrypoint, *INDEXER.cmd]),
        ({"args": ["--once"]}, [*INDEXER.entrypoint, "--once"]),
        ({"command": ["python", "-m", "x"]}, ["python", "-m", "x"]),  # the image's CMD is dropped too
        (
            {"command": ["echo"], "args": ["$(NAME)", "$$(NAME)", "$(MISSING)"]},
            ["echo", "v", "$(NAME)", "$(MISSING)"],
        ),
    ],
)
def test_command_and_args_over_entrypoint_and_cmd(container: dict, expected: list[str]) -> None:
    assert podspec.command(container, INDEXER, {"NAME": "v"}) == expected


@pytest.mark.parametrize(
    ("pod_security", "container_security", "expected"),
    [
        ({}, {}, (10001, 10001, (10001,))),  # the image's USER 10001:10001
        ({"runAsUser": 5}, {}, (5, 0, (0,))),  # no account 5 in the image: group 0
        ({"runAsUser": 10001}, {}, (10001, 10001, (10001,))),  # the image's account: its group
        ({"runAsUser": 5, "fsGroup": 7, "supplementalGroups": [8]}, {"runAsGroup": 6}, (5, 6, (6, 8, 7))),
    ],
)
def test_identity(pod_security: dict, container_security: dict, expected: tuple) -> None:
    who = podspec.identity(
        pod(securityContext=pod_security), {"securityContext": container_security}, INDEXER
    )
    assert (who.uid, who.gid, who.groups) == expected


def test_run_as_non_root_needs_a_numeric_non_root_user() -> None:
    with pytest.raises(podspec.ConfigError, match="will run as root"):
        podspec.identity(
            pod(securityContext={"runAsNonRoot": True}), {"securityContext": {"runAsUser": 0}}, INDEXER
        )
    named = INDEXER.__class__(**{**INDEXER.__dict__, "user": "app"})
    with pytest.raises(podspec.ConfigError, match="non-numeric user"):
        podspec.identity(pod(securityContext={"runAsNonRoot": True}), {}, named)
    assert podspec.identity(pod(securityContext={"runAsNonRoot": True}), {}, INDEXER).uid == 10001


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"volumes": [{"name": "v", "hostPath": {"path": "/"}}]}, "hostPath"),
        ({"volumes": [{"name": "v", "csi": {"driver": "x"}}]}, "csi"),
        ({"hostPID": True}, "hostPID"),
        ({"hostUsers": False}, "hostUsers"),
        ({"containers": [{"name": "c", "lifecycle": {"preStop": {}}}]}, "lifecycle"),
        ({"containers": [{"name": "c", "ports": [{"containerPort": 1, "hostPort": 1}]}]}, "hostPort"),
        ({"containers": [{"name": "c", "livenessProbe": {"grpc": {"port": 1}}}]}, "livenessProbe"),
        ({"containers": [{"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}, "nope"),
        ({"initContainers": [{"name": "s", "restartPolicy": "Always"}]}, "sidecar"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(spec: dict, words: str) -> None:
    with pytest.raises(podspec.Unsupported, match=words):
        podspec.check_pod(pod(**spec))


def test_scheduling_verdicts() -> None:
    assert podspec.schedule(pod()) is None
    assert podspec.schedule(pod(nodeSelector={"kubernetes.io/os": "linux"})) is None
    assert "selector" in (podspec.schedule(pod(nodeSelector={"gpu": "yes"})) or "")
    gpu = pod(containers=[{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}])
    assert "Insufficient nvidia.com/gpu" in (podspec.schedule(gpu) or "")


def test_service_links_name_every_port() -> None:
    service = {"metadata": {"name": "my-db"}, "spec": {"clusterIP": "10.96.1.9",
               "ports": [{"name": "sql", "port": 5432}, {"port": 9187}]}}  # fmt: skip
    env = podenv.service_links(
        [service, {"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": []}}]
    )
    assert env["MY_DB_SERVICE_HOST"] == "10.96.1.9" and env["MY_DB_SERVICE_PORT"] == "5432"
    assert env["MY_DB_SERVICE_PORT_SQL"] == "5432" and env["MY_DB_PORT_9187_TCP_ADDR"] == "10.96.1.9"
    assert not any(k.startswith("H_") for k in env)


def test_resource_field_defaults_to_node_capacity_without_a_limit() -> None:
    assert podenv.resource_value(pod(), {}, {"resource": "limits.cpu"}) == podspec.NODE_CAPACITY["cpu"]
    assert (
        podenv.resource_value(
            pod(), {"resources": {"limits": {"cpu": "1500m"}}}, {"resource": "requests.cpu"}
        )
        == "2"
    )


@pytest.mark.parametrize(
    ("value", "total", "round_up", "expected"),
    [(None, 3, True, 1), (None, 3, False, 0), ("50%", 3, True, 2), ("50%", 3, False, 1), (2, 10, True, 2)],
)
def test_max_surge_and_unavailable_arithmetic(
    value: object, total: int, round_up: bool, expected: int
) -> None:
    assert resolve_fraction(value, total, "25%", round_up=round_up) == expected  # type: ignore[arg-type]


def test_label_selectors() -> None:
    selector = {
        "matchLabels": {"a": "1"},
        "matchExpressions": [{"key": "b", "operator": "In", "values": ["x"]}],
    }
    assert selector_matches(selector, {"a": "1", "b": "x"})
    assert not selector_matches(selector, {"a": "1", "b": "y"})
    assert not selector_matches({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, {"a": "1"})


def test_strategic_merge_patch_merges_containers_by_name_and_follows_directives() -> None:
    live = {
        "spec": {
            "containers": [
                {
                    "name": "a",
                    "image": "one",
                    "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                },
                {"name": "b", "image": "two", "args": ["--old"]},
            ],
            "tolerations": [{"key": "k"}],
        }
    }
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
            "containers": [
                {"name": "a", "env": [{"name": "X", "value": "9"}, {"name": "Y", "$patch": "delete"}]},
                {"name": "b", "args": ["--new"]},
            ],
            "tolerations": [{"key": "other"}],
        }
    }
    merged = strategic_merge(live, patch)
    assert merged["spec"]["containers"] == [
        {"name": "b", "image": "two", "args": ["--new"]},  # args: an atomic list, replaced
        {"name": "a", "image": "one", "env": [{"name": "X", "value": "9"}]},
    ]
    assert merged["spec"]["tolerations"] == [{"key": "other"}]
    assert strategic_merge({"a": 1, "b": 2}, {"b": None}) == {"a": 1}
