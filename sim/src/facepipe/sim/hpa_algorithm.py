"""The HPA's normalisation of a proposal, as kube-controller-manager's horizontal.go does it.

Time is passed in (``now``, seconds) so tests can drive it. Proposals come from
:mod:`facepipe.sim.hpa_replicas`; then:

- normalisation without ``behavior``: a 5-minute downscale stabilisation (highest
  recommendation in the window) and at most ``max(2 × current, 4)`` replicas per step;
- normalisation with ``behavior`` (defaults filled in as the API server does): stabilisation
  windows both ways (the current count clamped between the lowest recent recommendation and
  the highest one), then the rate policies (``Pods``/``Percent`` per ``periodSeconds``, combined
  by ``selectPolicy`` Max/Min/Disabled) over the scale events of each policy's period;
- min/max replicas, with the conditions (AbleToScale, ScalingLimited) and their reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from facepipe.sim.hpa_replicas import DEFAULT_TOLERANCE, Tolerances
from facepipe.sim.kubeutil import parse_quantity

# --- behavior ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    stabilization_window: int | None
    select_policy: str  # Max, Min, Disabled
    policies: tuple[Policy, ...]
    tolerance: float | None = None

    @property
    def longest_period(self) -> int:
        return max((p.period_seconds for p in self.policies), default=0)


DEFAULT_SCALE_UP = ScalingRules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
DEFAULT_SCALE_DOWN = ScalingRules(None, "Max", (Policy("Percent", 100, 15),))


@dataclass(frozen=True)
class Behavior:
    scale_up: ScalingRules
    scale_down: ScalingRules


def _rules(spec: Mapping[str, Any] | None, default: ScalingRules) -> ScalingRules:
    """GenerateHPAScaleUpRules / GenerateHPAScaleDownRules: fill what the user left out."""
    if spec is None:
        return default
    window = spec.get("stabilizationWindowSeconds", default.stabilization_window)
    policies = tuple(
        Policy(str(p["type"]), int(p["value"]), int(p["periodSeconds"])) for p in spec.get("policies") or []
    )
    for policy in policies:
        if policy.kind not in ("Pods", "Percent"):
            raise ValueError(f"unknown scaling policy type {policy.kind!r}")
    select = str(spec.get("selectPolicy") or "Max")
    if select not in ("Max", "Min", "Disabled"):
        raise ValueError(f"unknown selectPolicy {select!r}")
    tolerance = spec.get("tolerance")
    return ScalingRules(
        None if window is None else int(window),
        select,
        policies or default.policies,
        None if tolerance is None else parse_quantity(tolerance),
    )


def parse_behavior(spec: Mapping[str, Any] | None) -> Behavior | None:
    """An HPA's spec.behavior with the API server's defaults, or None when absent."""
    if spec is None:
        return None
    return Behavior(
        _rules(spec.get("scaleUp"), DEFAULT_SCALE_UP), _rules(spec.get("scaleDown"), DEFAULT_SCALE_DOWN)
    )


def tolerances_for(behavior: Behavior | None, default: float = DEFAULT_TOLERANCE) -> Tolerances:
    if behavior is None:
        return Tolerances(default, default)
    down, up = behavior.scale_down.tolerance, behavior.scale_up.tolerance
    return Tolerances(default if down is None else down, default if up is None else up)


# --- normalisation (horizontal.go) -------------------------------------------------------------

Condition = tuple[str, str, str, str]  # type, status, reason, message
_LOWER_RECENTLY = (
    "recent recommendations were lower than current one, applying the lowest recent recommendation"
)
_HIGHER_RECENTLY = (
    "recent recommendations were higher than current one, applying the highest recent recommendation"
)


@dataclass
class _ScaleEvent:
    change: int
    time: float
    outdated: bool = False


@dataclass
class ReplicaHistory:
    """What the controller remembers per HPA: recent recommendations and scale events."""

    recommendations: list[tuple[int, float]] = field(default_factory=list)
    up_events: list[_ScaleEvent] = field(default_factory=list)
    down_events: list[_ScaleEvent] = field(default_factory=list)

    def record_initial(self, current: int, now: float) -> None:
        if not self.recommendations:
            self.recommendations.append((current, now))

    def _store_recommendation(self, value: int, now: float, obsolete_before: float) -> None:
        for index, (_, when) in enumerate(self.recommendations):
            if when < obsolete_before:
                self.recommendations[index] = (value, now)
                return
        self.recommendations.append((value, now))

    def store_scale_event(self, behavior: Behavior | None, previous: int, new: int, now: float) -> None:
        """storeScaleEvent: only HPAs with a behavior keep events (their rate policies read them)."""
        if behavior is None:
            return
        up = new > previous
        rules = behavior.scale_up if up else behavior.scale_down
        events = self.up_events if up else self.down_events
        for event in events:
            if event.time < now - rules.longest_period:
                event.outdated = True
        fresh = _ScaleEvent(abs(new - previous), now)
        for index, event in enumerate(events):
            if event.outdated:
                events[index] = fresh
                return
        events.append(fresh)


def _change_in_period(events: Sequence[_ScaleEvent], period: int, now: float) -> int:
    return sum(e.change for e in events if e.time > now - period)


def _period_start(current: int, history: ReplicaHistory, policy: Policy, now: float) -> int:
    """The replica count at the start of the policy's period (changes within it undone)."""
    return (
        current
        - _change_in_period(history.up_events, policy.period_seconds, now)
        + _change_in_period(history.down_events, policy.period_seconds, now)
    )


def policy_limit(current: int, history: ReplicaHistory, rules: ScalingRules, now: float, *, up: bool) -> int:
    """calculateScaleUpLimitWithScalingRules / calculateScaleDownLimitWithBehaviors: the furthest
    count the policies allow; ``selectPolicy`` Max picks the largest change, Min the smallest."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = _period_start(current, history, policy, now)
        if policy.kind == "Pods":
            proposals.append(start + policy.value if up else start - policy.value)
        elif up:
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
        else:
            proposals.append(int(start * (1 - policy.value / 100)))
    largest_change = rules.select_policy != "Min"
    return (max if largest_change == up else min)(proposals)


def normalize(
    history: ReplicaHistory,
    *,
    current: int,
    desired: int,
    min_replicas: int,
    max_replicas: int,
    behavior: Behavior | None,
    downscale_window: float,
    now: float,
) -> tuple[int, list[Condition]]:
    """normalizeDesiredReplicas / normalizeDesiredReplicasWithBehaviors: (replicas, conditions)."""
    if behavior is None:
        return _normalize_plain(history, current, desired, min_replicas, max_replicas, downscale_window, now)
    if behavior.scale_down.stabilization_window is None:  # maybeInitScaleDownStabilizationWindow
        behavior = replace(
            behavior, scale_down=replace(behavior.scale_down, stabilization_window=int(downscale_window))
        )
    up_window = behavior.scale_up.stabilization_window or 0
    down_window = behavior.scale_down.stabilization_window or 0
    up_recommendation = down_recommendation = desired
    for value, when in history.recommendations:
        if when > now - up_window:
            up_recommendation = min(value, up_recommendation)
        if when > now - down_window:
            down_recommendation = max(value, down_recommendation)
    stabilized = min(max(current, up_recommendation), down_recommendation)
    history._store_recommendation(desired, now, now - max(up_window, down_window))
    conditions: list[Condition] = []
    if stabilized != desired:
        if desired >= current:
            reason = "ScaleUpStabilized"
            message = _LOWER_RECENTLY
        else:
            reason = "ScaleDownStabilized"
            message = _HIGHER_RECENTLY
        conditions.append(("AbleToScale", "True", reason, message))
    else:
        conditions.append(
            ("AbleToScale", "True", "ReadyForNewScale", "recommended size matches current size")
        )
    final, reason, message = _rate_limited(
        history, behavior, current, stabilized, min_replicas, max_replicas, now
    )
    conditions.append(("ScalingLimited", "False" if final == stabilized else "True", reason, message))
    return final, conditions


def _rate_limited(
    history: ReplicaHistory,
    behavior: Behavior,
    current: int,
    desired: int,
    min_replicas: int,
    max_replicas: int,
    now: float,
) -> tuple[int, str, str]:
    """convertDesiredReplicasWithBehaviorRate."""
    if desired > current:
        limit = max(policy_limit(current, history, behavior.scale_up, now, up=True), current)
        if max_replicas > limit:
            allowed, reason = limit, "ScaleUpLimit"
            message = "the desired replica count is increasing faster than the maximum scale rate"
        else:
            allowed, reason = max_replicas, "TooManyReplicas"
            message = "the desired replica count is more than the maximum replica count"
        if desired > allowed:
            return allowed, reason, message
    elif desired < current:
        limit = min(policy_limit(current, history, behavior.scale_down, now, up=False), current)
        if min_replicas < limit:
            allowed, reason = limit, "ScaleDownLimit"
            message = "the desired replica count is decreasing faster than the maximum scale rate"
        else:
            allowed, reason = min_replicas, "TooFewReplicas"
            message = "the desired replica count is less than the minimum replica count"
        if desired < allowed:
            return allowed, reason, message
    return desired, "DesiredWithinRange", "the desired count is within the acceptable range"


def _normalize_plain(
    history: ReplicaHistory,
    current: int,
    desired: int,
    min_replicas: int,
    max_replicas: int,
    downscale_window: float,
    now: float,
) -> tuple[int, list[Condition]]:
    """stabilizeRecommendation + convertDesiredReplicasWithRules (no behavior)."""
    stabilized = desired
    cutoff = now - downscale_window
    for value, when in history.recommendations:
        if when >= cutoff and value > stabilized:
            stabilized = value
    history._store_recommendation(desired, now, cutoff)
    conditions: list[Condition] = []
    if stabilized != desired:
        message = (
            "recent recommendations were higher than current one, applying the highest recent recommendation"
        )
        conditions.append(("AbleToScale", "True", "ScaleDownStabilized", message))
    else:
        conditions.append(
            ("AbleToScale", "True", "ReadyForNewScale", "recommended size matches current size")
        )
    up_limit = int(max(2.0 * current, 4.0))
    if max_replicas > up_limit:
        allowed, reason = up_limit, "ScaleUpLimit"
        message = "the desired replica count is increasing faster than the maximum scale rate"
    else:
        allowed, reason = max_replicas, "TooManyReplicas"
        message = "the desired replica count is more than the maximum replica count"
    if stabilized < min_replicas:
        final, reason, message = (
            min_replicas,
            "TooFewReplicas",
            "the desired replica count is less than the minimum replica count",
        )
    elif stabilized > allowed:
        final = allowed
    else:
        final, reason, message = (
            stabilized,
            "DesiredWithinRange",
            "the desired count is within the acceptable range",
        )
    conditions.append(("ScalingLimited", "False" if final == stabilized else "True", reason, message))
    return final, conditions
