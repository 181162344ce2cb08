"""Pure parts of a reconcile pass: the status it writes and when it decides to write a child."""

from __future__ import annotations

from typing import Any

from facepipe.operator.apply import contains
from facepipe.operator.status import (
    ComponentState,
    Observation,
    component_state,
    compute_status,
    status_patch,
)


def state(ready: int, desired: int = 1, rolled_out: bool = True) -> ComponentState:
    return ComponentState(
        desiredReplicas=desired,
        replicas=ready,
        readyReplicas=ready,
        updatedReplicas=ready,
        rolledOut=rolled_out,
        autoscaler="",
    )


ALL_READY = {name: state(1) for name in ("detector", "embedder", "indexer", "ops-api")}
STREAMS = [
    {"name": "q", "role": "ingest", "length": 9, "lag": 4, "pending": 3, "consumers": 1, "dlqLength": 0}
]


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_all_ready_is_running() -> None:
    status = compute_status(
        Observation(generation=3, components=ALL_READY, streams=STREAMS, streams_read=True),
        {},
        now="2026-01-01T00:00:00Z",
    )
    assert status["phase"] == "Running"
    assert status["observedGeneration"] == 3
    assert status["readyComponents"] == "4/4"
    assert status["ingestLag"] == 7  # lag + pending of the ingest stream
    cond = conditions(status)
    assert (cond["Ready"]["status"], cond["Progressing"]["status"], cond["Degraded"]["status"]) == (
        "True",
        "False",
        "False",
    )


def test_not_ready_component_is_progressing_and_named() -> None:
    components = {**ALL_READY, "embedder": state(0, desired=2, rolled_out=False)}
    status = compute_status(Observation(generation=1, components=components), {})
    assert status["phase"] == "Progressing"
    assert status["readyComponents"] == "3/4"
    assert conditions(status)["Ready"]["message"] == "not ready: embedder"
    assert conditions(status)["Progressing"]["reason"] == "RollingOut"


def test_invalid_spec_is_degraded_with_the_message() -> None:
    status = compute_status(Observation(generation=2, spec_error="spec.dedup.maxHamming: too big"), {})
    assert status["phase"] == "Degraded"
    degraded = conditions(status)["Degraded"]
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True",
        "InvalidSpec",
        "spec.dedup.maxHamming: too big",
    )
    assert status["message"] == "spec.dedup.maxHamming: too big"


def test_unreachable_redis_is_degraded_but_keeps_component_figures() -> None:
    status = compute_status(
        Observation(
            generation=1,
            components=ALL_READY,
            streams_read=True,
            streams_error="cannot read stream figures from Redis: refused",
        ),
        {},
    )
    assert status["phase"] == "Degraded"
    assert conditions(status)["Degraded"]["reason"] == "RedisUnreachable"
    assert status["readyComponents"] == "4/4"


def test_streams_not_read_this_pass_keep_the_previous_figures() -> None:
    first = compute_status(
        Observation(generation=1, components=ALL_READY, streams=STREAMS, streams_read=True),
        {},
        now="2026-01-01T00:00:00Z",
    )
    second = compute_status(
        Observation(generation=1, components=ALL_READY), first, now="2026-01-01T00:05:00Z"
    )
    assert second == first
    assert status_patch(second, first) == {}


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    first = compute_status(Observation(generation=1, components=ALL_READY), {}, now="2026-01-01T00:00:00Z")
    same = compute_status(Observation(generation=1, components=ALL_READY), first, now="2026-01-01T01:00:00Z")
    assert conditions(same)["Ready"]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flipped = compute_status(
        Observation(generation=1, components={**ALL_READY, "indexer": state(0)}),
        first,
        now="2026-01-01T02:00:00Z",
    )
    assert conditions(flipped)["Ready"]["lastTransitionTime"] == "2026-01-01T02:00:00Z"


def test_status_patch_removes_fields_that_went_away() -> None:
    assert status_patch({"phase": "Running"}, {"phase": "Degraded", "streamsError": "x", "kopf": {}}) == {
        "phase": "Running",
        "streamsError": None,
    }


def test_component_state_from_a_deployment() -> None:
    deployment = {
        "metadata": {"generation": 4},
        "spec": {"replicas": 3},
        "status": {"observedGeneration": 4, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3},
    }
    assert component_state(deployment, "", 1).ready
    assert not component_state({**deployment, "status": {"readyReplicas": 2}}, "", 1).ready
    # Autoscaled: no spec.replicas written by the operator; the minimum counts until the HPA sets one.
    assert component_state({"metadata": {}, "spec": {}}, "hpa", 2).desiredReplicas == 2


def test_contains_ignores_server_defaults_but_not_edits() -> None:
    desired = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "c",
                            "image": "x:1",
                            "ports": [{"containerPort": 9100}],
                            "resources": {"limits": {"cpu": "0.5", "memory": "1Gi"}},
                        }
                    ]
                }
            }
        }
    }
    actual = {
        "metadata": {"resourceVersion": "7"},
        "status": {"replicas": 1},
        "spec": {
            "template": {
                "spec": {
                    "dnsPolicy": "ClusterFirst",
                    "containers": [
                        {
                            "name": "c",
                            "image": "x:1",
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"containerPort": 9100, "protocol": "TCP"}],
                            "resources": {"limits": {"cpu": "500m", "memory": "1024Mi"}},
                        }
                    ],
                }
            }
        },
    }
    assert contains(actual, desired)
    edited = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [{**actual["spec"]["template"]["spec"]["containers"][0], "image": "x:2"}]
                }
            }
        }
    }
    assert not contains(edited, desired)
    extra_container = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [actual["spec"]["template"]["spec"]["containers"][0], {"name": "sidecar"}]
                }
            }
        }
    }
    assert not contains(extra_container, desired)
    assert not contains({"data": {"A": "1"}}, {"data": {"A": "1", "B": "2"}})
