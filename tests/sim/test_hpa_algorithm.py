"""The HPA stand-in's arithmetic against the real controller's documented behaviour.

Cases come from the Kubernetes documentation ("Horizontal Pod Autoscaling": algorithm
details, tolerance, stabilization window, scaling policies, default behavior) and from
kube-controller-manager's replica_calculator.go / horizontal.go, whose figures they reproduce.
Time is passed explicitly, so windows and policy periods are exercised without waiting.
"""

from __future__ import annotations

import pytest

from facepipe.sim import hpa_algorithm as algo
from facepipe.sim import hpa_replicas as calc

T0 = 1_000_000.0
TOL = calc.Tolerances()


# --- proposals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_replicas", "usage_milli", "target_milli", "expected"),
    [
        (1, 200, 100, 2),  # docs: 200m against 100m doubles the replicas
        (2, 100, 100, 1),  # docs: half the target halves them
        (2, 2_100, 1_000, 2),  # ratio 1.05: within the 10 % tolerance, no change
        (2, 1_850, 1_000, 2),  # ratio 0.925: within the tolerance
        (2, 2_300, 1_000, 3),  # ratio 1.15: ceil(2.3)
        (2, 1_700, 1_000, 2),  # ratio 0.85: out of tolerance, ceil(1.7) = 2
        (4, 900, 1_000, 1),  # backlog 0.9 of one replica's share: ceil(0.9)
        (3, 0, 1_000, 0),  # nothing waiting: zero (min replicas is applied later)
        (1, 400_000, 10_000, 40),  # 400 messages at 10 per replica
    ],
)
def test_external_average_value(
    status_replicas: int, usage_milli: int, target_milli: int, expected: int
) -> None:
    replicas, _ = calc.external_average_replicas(status_replicas, usage_milli, target_milli, TOL)
    assert replicas == expected


def test_external_average_reports_the_usage_per_replica() -> None:
    assert calc.external_average_replicas(4, 10_000, 1_000, TOL) == (10, 2_500)


@pytest.mark.parametrize(
    ("spec_replicas", "usage", "target", "ready", "expected"),
    [
        (3, 30_000, 10_000, 3, 9),  # Value: the ratio applies to the ready pods
        (3, 30_000, 10_000, 1, 3),  # only one ready pod: ceil(3 × 1)
        (3, 10_500, 10_000, 3, 3),  # within tolerance
        (0, 25_000, 10_000, 0, 3),  # a target at zero: ceil(ratio)
    ],
)
def test_external_value(spec_replicas: int, usage: int, target: int, ready: int, expected: int) -> None:
    assert calc.external_value_replicas(spec_replicas, usage, target, ready, TOL) == expected


def test_tolerance_can_differ_per_direction() -> None:
    loose_down = calc.Tolerances(scale_down=0.5, scale_up=0.0)
    assert calc.external_average_replicas(2, 1_200, 1_000, loose_down)[0] == 2  # 0.6: within 50 % down
    assert calc.external_average_replicas(2, 2_020, 1_000, loose_down)[0] == 3  # 1.01: above 0 % up


def pod(
    name: str, usage: int | None, request: int = 1000, *, ready: bool = True, phase: str = "Running"
) -> calc.PodSample:
    """A pod started long ago (past the cpu initialisation period), ready since then."""
    return calc.PodSample(
        name=name,
        phase=phase,
        ready=ready,
        start_time=T0 - 3600,
        ready_transition_time=T0 - 3500,
        deleted=False,
        request_milli=request,
        usage_milli=usage,
        sample_time=T0,
        sample_window=15,
    )


def never_ready(name: str, usage: int) -> calc.PodSample:
    """Started long ago, not ready since 10 s after start: within the initial readiness delay."""
    return calc.PodSample(name, "Running", False, T0 - 3600, T0 - 3590, False, 1000, usage, T0, 15)


@pytest.mark.parametrize(
    ("pods", "current", "expected", "utilization"),
    [
        ([pod("a", 500), pod("b", 500)], 2, 2, 50),  # at target
        ([pod("a", 900), pod("b", 900)], 2, 4, 90),  # 90 % of 50 %: ceil(1.8 × 2)
        ([pod("a", 100), pod("b", 100)], 2, 1, 10),  # 10 % of 50 %: ceil(0.2 × 2)
        # scale-up: a pod without a sample counts as 0 %: (900+900+0)/3 = 60 % -> ceil(1.2 × 3)
        ([pod("a", 900), pod("b", 900), pod("c", None)], 3, 4, 90),
        # scale-down: a pod without a sample counts as its request (100 %):
        # (10+10+100)/3 = 40 % of 50 % -> ceil(0.8 × 3) = 3, the current count
        ([pod("a", 100), pod("b", 100), pod("c", None)], 3, 3, 10),
        # scale-up: a pod that has never been ready counts as 0 %: (900+0)/2 = 45 %, within
        # the tolerance of 50 %, so no change
        ([pod("a", 900), never_ready("b", 400)], 2, 2, 90),
        # ...while one that was ready before and is not now is measured like the others
        ([pod("a", 900), pod("b", 400, ready=False)], 2, 3, 65),
        # a Failed pod is ignored altogether
        ([pod("a", 500), pod("b", 10, phase="Failed")], 1, 1, 50),
    ],
)
def test_cpu_utilization(pods: list[calc.PodSample], current: int, expected: int, utilization: int) -> None:
    replicas, observed, _ = calc.resource_utilization_replicas(current, 50, pods, TOL, now=T0)
    assert (replicas, observed) == (expected, utilization)


def test_cpu_without_any_sample_is_unavailable() -> None:
    with pytest.raises(calc.MetricsUnavailable):
        calc.resource_utilization_replicas(1, 50, [pod("a", None)], TOL, now=T0)


def test_cpu_without_a_request_is_refused() -> None:
    with pytest.raises(calc.MetricsUnavailable, match="missing request"):
        calc.resource_utilization_replicas(1, 50, [pod("a", 500, request=None)], TOL, now=T0)  # type: ignore[arg-type]


def test_cpu_of_a_pod_still_starting_is_not_trusted() -> None:
    young = calc.PodSample("y", "Running", False, T0 - 10, T0 - 10, False, 1000, 900, T0, 15)
    replicas, _, _ = calc.resource_utilization_replicas(2, 50, [pod("a", 900), young], TOL, now=T0)
    assert replicas == 2  # the starting pod counts as 0 %: 45 %, opposite direction, no change


# --- normalisation without behavior ------------------------------------------------------------


def plain(
    history: algo.ReplicaHistory, current: int, desired: int, now: float, lo: int = 1, hi: int = 20
) -> int:
    replicas, _ = algo.normalize(
        history,
        current=current,
        desired=desired,
        min_replicas=lo,
        max_replicas=hi,
        behavior=None,
        downscale_window=300,
        now=now,
    )
    return replicas


def test_scale_up_is_at_most_double_or_four_per_step() -> None:
    assert plain(algo.ReplicaHistory(), 1, 10, T0) == 4
    assert plain(algo.ReplicaHistory(), 3, 10, T0) == 6
    assert plain(algo.ReplicaHistory(), 20, 30, T0, hi=25) == 25


def test_downscale_stabilization_keeps_the_highest_recent_recommendation() -> None:
    history = algo.ReplicaHistory()
    history.record_initial(5, T0)
    assert plain(history, 5, 2, T0 + 100) == 5
    assert plain(history, 5, 2, T0 + 299) == 5
    assert plain(history, 5, 2, T0 + 401) == 2  # the 5 is older than 300 s


def test_min_and_max_replicas_bound_the_result() -> None:
    replicas, conditions = algo.normalize(
        algo.ReplicaHistory(),
        current=2,
        desired=0,
        min_replicas=1,
        max_replicas=5,
        behavior=None,
        downscale_window=0,
        now=T0,
    )
    assert replicas == 1
    assert conditions[-1][:3] == ("ScalingLimited", "True", "TooFewReplicas")


# --- normalisation with behavior ---------------------------------------------------------------


def with_behavior(
    history: algo.ReplicaHistory, behavior: dict, current: int, desired: int, now: float, hi: int = 100
) -> tuple[int, list[algo.Condition]]:
    parsed = algo.parse_behavior(behavior)
    replicas, conditions = algo.normalize(
        history,
        current=current,
        desired=desired,
        min_replicas=1,
        max_replicas=hi,
        behavior=parsed,
        downscale_window=300,
        now=now,
    )
    if replicas != current:
        history.store_scale_event(parsed, current, replicas, now)
    return replicas, conditions


NO_DOWN_WINDOW = {"scaleDown": {"stabilizationWindowSeconds": 0}}


def test_default_scale_up_allows_four_pods_or_double_per_15s() -> None:
    history = algo.ReplicaHistory()
    assert with_behavior(history, NO_DOWN_WINDOW, 1, 50, T0)[0] == 5  # max(1+4, 1×2)
    assert with_behavior(history, NO_DOWN_WINDOW, 5, 50, T0 + 5)[0] == 5  # same period: still 1+4
    assert with_behavior(history, NO_DOWN_WINDOW, 5, 50, T0 + 16)[0] == 10  # new period: max(9, 10)
    assert with_behavior(history, NO_DOWN_WINDOW, 10, 50, T0 + 32)[0] == 20


def test_select_policy_min_and_disabled() -> None:
    policies = [
        {"type": "Pods", "value": 4, "periodSeconds": 60},
        {"type": "Percent", "value": 100, "periodSeconds": 60},
    ]
    smallest = {"scaleUp": {"selectPolicy": "Min", "policies": policies}}
    assert with_behavior(algo.ReplicaHistory(), smallest, 10, 50, T0)[0] == 14
    disabled = {"scaleUp": {"selectPolicy": "Disabled"}}
    replicas, conditions = with_behavior(algo.ReplicaHistory(), disabled, 3, 50, T0)
    assert replicas == 3
    assert conditions[-1][:3] == ("ScalingLimited", "True", "ScaleUpLimit")


def test_scale_down_policy_limits_the_rate_over_its_period() -> None:
    half_per_minute = {
        "scaleDown": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        }
    }
    history = algo.ReplicaHistory()
    assert with_behavior(history, half_per_minute, 10, 1, T0)[0] == 5
    assert with_behavior(history, half_per_minute, 5, 1, T0 + 30)[0] == 5  # period started at 10: 10 × 0.5
    assert with_behavior(history, half_per_minute, 5, 1, T0 + 61)[0] == 2  # int(5 × 0.5)


def test_scale_up_stabilization_window_takes_the_lowest_recent_recommendation() -> None:
    slow_up = {"scaleUp": {"stabilizationWindowSeconds": 60}, **NO_DOWN_WINDOW}
    history = algo.ReplicaHistory()
    history.record_initial(3, T0)
    replicas, conditions = with_behavior(history, slow_up, 3, 8, T0 + 30)
    assert replicas == 3
    assert conditions[0][:3] == ("AbleToScale", "True", "ScaleUpStabilized")
    assert with_behavior(history, slow_up, 3, 8, T0 + 91)[0] == 7  # only 8s in the window; 3+4


def test_behavior_without_scale_down_window_uses_the_controller_default() -> None:
    history = algo.ReplicaHistory()
    history.record_initial(6, T0)
    assert with_behavior(history, {"scaleUp": {}}, 6, 1, T0 + 200)[0] == 6  # 300 s default window
    assert with_behavior(history, {"scaleUp": {}}, 6, 1, T0 + 301)[0] == 1


def test_behavior_defaults_are_the_api_servers() -> None:
    behavior = algo.parse_behavior({})
    assert behavior is not None
    assert behavior.scale_up == algo.DEFAULT_SCALE_UP
    assert behavior.scale_down.stabilization_window is None
    assert behavior.scale_down.policies == (algo.Policy("Percent", 100, 15),)
    assert algo.parse_behavior(None) is None
    with pytest.raises(ValueError, match="selectPolicy"):
        algo.parse_behavior({"scaleUp": {"selectPolicy": "Biggest"}})
