"""Small Kubernetes helpers shared by the simulation's controllers.

Label selectors as the API server evaluates them, quantities and durations as Kubernetes and
Prometheus write them, conditions as controllers keep them, and the kinds the controllers read.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from facepipe.operator.kube import DEPLOYMENT, HPA, SCALED_OBJECT, SECRET, SERVICE, Kind

POD = Kind("v1", "Pod", "pods")
ENDPOINTS = Kind("v1", "Endpoints", "endpoints")
NAMESPACE = Kind("v1", "Namespace", "namespaces", namespaced=False)
EVENT = Kind("v1", "Event", "events")
SERVICE_MONITOR = Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors")
POD_MONITOR = Kind("monitoring.coreos.com/v1", "PodMonitor", "podmonitors")
PROMETHEUS_RULE = Kind("monitoring.coreos.com/v1", "PrometheusRule", "prometheusrules")
TRIGGER_AUTHENTICATION = Kind("keda.sh/v1alpha1", "TriggerAuthentication", "triggerauthentications")

__all__ = [
    "DEPLOYMENT",
    "ENDPOINTS",
    "EVENT",
    "HPA",
    "NAMESPACE",
    "POD",
    "POD_MONITOR",
    "PROMETHEUS_RULE",
    "SCALED_OBJECT",
    "SECRET",
    "SERVICE",
    "SERVICE_MONITOR",
    "TRIGGER_AUTHENTICATION",
    "LabelSelector",
    "Requirement",
]


# --- label selectors ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector: ``key op values``.

    ``Equals`` is a matchLabels entry, kept apart from a one-value ``In`` as the API machinery
    does (prometheus-adapter turns the first into ``=`` and the second into ``=~``)."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator in ("Equals", "In"):
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        raise ValueError(f"unknown label selector operator {self.operator!r}")


_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}


@dataclass(frozen=True)
class LabelSelector:
    """A ``metav1.LabelSelector`` (``LabelSelectorAsSelector``): terms sorted by key."""

    requirements: tuple[Requirement, ...]

    @classmethod
    def parse(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        """An absent selector selects everything; an unknown operator is an error, never ignored."""
        selector = selector or {}
        terms = [
            Requirement(str(k), "Equals", (str(v),)) for k, v in (selector.get("matchLabels") or {}).items()
        ]
        for expression in selector.get("matchExpressions") or []:
            operator = expression.get("operator")
            if operator not in _OPERATORS:
                raise ValueError(f"unknown label selector operator {operator!r}")
            values = tuple(sorted(str(v) for v in expression.get("values") or []))
            if operator in ("In", "NotIn") and not values:
                raise ValueError(f"operator {operator} on {expression.get('key')!r} needs values")
            if operator in ("Exists", "DoesNotExist") and values:
                raise ValueError(f"operator {operator} on {expression.get('key')!r} takes no values")
            terms.append(Requirement(str(expression["key"]), operator, values))
        # The API machinery keeps requirements sorted by key (prometheus-adapter relies on it).
        return cls(tuple(sorted(terms, key=lambda r: r.key)))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(term.matches(labels) for term in self.requirements)

    def __str__(self) -> str:
        """The string form of ``metav1.FormatLabelSelector`` (a Scale's status.selector)."""
        parts = []
        for term in self.requirements:
            if term.operator == "Equals":
                parts.append(f"{term.key}={term.values[0]}")
            elif term.operator in ("In", "NotIn"):
                parts.append(f"{term.key} {term.operator.lower()} ({','.join(term.values)})")
            elif term.operator == "Exists":
                parts.append(term.key)
            else:
                parts.append(f"!{term.key}")
        return ",".join(parts)


# --- quantities and durations ------------------------------------------------------------------

_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIX = {
    None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def parse_quantity(value: str | float | int) -> float:
    """A resource.Quantity (``500m``, ``2``, ``1Gi``, ``1e3``) as a float."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(str(value).strip())
    if not match:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def milli(value: str | float | int) -> int:
    """``Quantity.MilliValue()``: the value in thousandths, rounded up as Kubernetes does."""
    scaled = parse_quantity(value) * 1000
    return int(scaled) if scaled == int(scaled) else int(scaled) + (1 if scaled > 0 else 0)


def format_milli(value: int) -> str:
    """A milli-value as the API server prints a Quantity: ``3`` or ``1500m``."""
    return str(value // 1000) if value % 1000 == 0 else f"{value}m"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """A Prometheus duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    text = str(text).strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a Prometheus duration")
    return sum(float(n) * _DURATION_UNIT[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration (``1500ms``, ``30s``)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


# --- names, times, conditions ------------------------------------------------------------------

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_label_name(name: str) -> str:
    """What Prometheus' Kubernetes discovery does to a label key (``app.kubernetes.io/x``)."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def now_rfc3339(now: float | None = None) -> str:
    """An API timestamp for ``now`` (seconds since the epoch; default: the current time)."""
    moment = (
        datetime.datetime.now(tz=datetime.UTC)
        if now is None
        else datetime.datetime.fromtimestamp(now, datetime.UTC)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def set_condition(
    conditions: list[dict[str, Any]], kind: str, status: str, reason: str, message: str
) -> list[dict[str, Any]]:
    """Set one condition, keeping its lastTransitionTime unless its status changes."""
    for condition in conditions:
        if condition.get("type") == kind:
            if condition.get("status") != status:
                condition["lastTransitionTime"] = now_rfc3339()
            condition.update(status=status, reason=reason, message=message)
            return conditions
    conditions.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_rfc3339(),
        }
    )
    return conditions


def condition_status(obj: Mapping[str, Any], kind: str) -> str | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status"))
    return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    return condition_status(pod, "Ready") == "True"


def pod_terminated(pod: Mapping[str, Any]) -> bool:
    """Deleted, or in a phase no container runs in any more."""
    phase = (pod.get("status") or {}).get("phase")
    return bool(pod.get("metadata", {}).get("deletionTimestamp")) or phase in ("Succeeded", "Failed")


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def namespaces_of(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted({str(o["metadata"].get("namespace")) for o in objects if o["metadata"].get("namespace")})


def first(items: Sequence[Any], default: Any = None) -> Any:
    return items[0] if items else default
