"""prometheus-operator's translation of ServiceMonitors, PodMonitors and PrometheusRules.

Follows pkg/prometheus/promcfg.go (generateServiceMonitorConfig / generatePodMonitorConfig):
one scrape job per endpoint, named ``serviceMonitor/<ns>/<name>/<i>`` or
``podMonitor/<ns>/<name>/<i>``; the monitor's selector becomes ``keep``/``drop`` relabellings
on the discovery labels, the endpoint's port a ``keep`` on the port name, then the standard
target labels (namespace, service, pod, container, job, endpoint), then the endpoint's own
``relabelings``; ``metricRelabelings`` become ``metric_relabel_configs``. Discovery itself is
emulated (:mod:`facepipe.sim.scrape_targets`) and handed over as a file_sd file, so the
relabelling is Prometheus' own.

What the operator would do and the simulation cannot (TLS, authorisation, secrets, proxies)
is refused with :class:`UnsupportedMonitor`, never silently scraped some other way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from facepipe.sim.kubeutil import format_duration, parse_duration, sanitize_label_name

Role = Literal["pod", "endpoints"]

_UNSUPPORTED_ENDPOINT_FIELDS = (
    "tlsConfig", "bearerTokenFile", "bearerTokenSecret", "basicAuth", "oauth2", "authorization",
    "proxyUrl", "proxyConfig",
)  # fmt: skip
_RELABEL_KEYS = {
    "sourceLabels": "source_labels", "separator": "separator", "targetLabel": "target_label",
    "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action",
}  # fmt: skip


class UnsupportedMonitor(ValueError):
    """A monitor uses a field the simulation cannot honour."""


@dataclass(frozen=True)
class ScrapeOptions:
    """Simulation knobs. ``interval``: replaces every endpoint's interval (tests use ~1 s, where
    a cluster would wait 30 s); the scrape timeout is capped to it, as Prometheus requires."""

    interval: float | None = None


@dataclass
class ScrapeJob:
    """One scrape job: its Prometheus config and what its file_sd file must list."""

    name: str
    role: Role
    namespaces: list[str] | None  # None: every namespace (namespaceSelector.any)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)


def namespaces_for(monitor: Mapping[str, Any]) -> list[str] | None:
    """getNamespacesFromNamespaceSelector: any -> all; matchNames; else the monitor's own."""
    selector = (monitor.get("spec") or {}).get("namespaceSelector") or {}
    if selector.get("any"):
        return None
    if selector.get("matchNames"):
        return [str(n) for n in selector["matchNames"]]
    return [str(monitor["metadata"]["namespace"])]


def convert_relabelings(relabelings: list[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """monitoringv1.RelabelConfig (camelCase) to Prometheus relabel_config (generateRelabelConfig)."""
    out = []
    for item in relabelings or []:
        unknown = set(item) - set(_RELABEL_KEYS)
        if unknown:
            raise UnsupportedMonitor(f"unknown relabeling fields {sorted(unknown)}")
        converted = {_RELABEL_KEYS[k]: v for k, v in item.items() if v not in (None, "", [])}
        if "action" in converted:
            converted["action"] = str(converted["action"]).lower()
        out.append(converted)
    return out


def _selector_relabelings(selector: Mapping[str, Any] | None, source: str) -> list[dict[str, Any]]:
    """The monitor's label selector as keep/drop rules on ``__meta_kubernetes_<source>_label*``."""
    selector = selector or {}
    rules: list[dict[str, Any]] = []

    def labels(key: str) -> list[str]:
        name = sanitize_label_name(key)
        return [f"__meta_kubernetes_{source}_label_{name}", f"__meta_kubernetes_{source}_labelpresent_{name}"]

    for key in sorted(selector.get("matchLabels") or {}):
        value = selector["matchLabels"][key]
        rules.append({"action": "keep", "source_labels": labels(key), "regex": f"({value});true"})
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = "|".join(str(v) for v in expression.get("values") or [])
        present = [labels(key)[1]]
        if operator == "In":
            rules.append({"action": "keep", "source_labels": labels(key), "regex": f"({values});true"})
        elif operator == "NotIn":
            rules.append({"action": "drop", "source_labels": labels(key), "regex": f"({values});true"})
        elif operator == "Exists":
            rules.append({"action": "keep", "source_labels": present, "regex": "true"})
        elif operator == "DoesNotExist":
            rules.append({"action": "drop", "source_labels": present, "regex": "true"})
        else:
            raise UnsupportedMonitor(f"unknown selector operator {operator!r}")
    return rules


def _target_label_rules(source: str, names: list[str] | None) -> list[dict[str, Any]]:
    """targetLabels / podTargetLabels: copy a Service's or pod's label onto the target."""
    return [
        {
            "source_labels": [f"__meta_kubernetes_{source}_label_{sanitize_label_name(name)}"],
            "target_label": sanitize_label_name(name),
            "regex": "(.+)",
            "replacement": "${1}",
        }
        for name in names or []
    ]


_RUNNING_FILTER = {
    "action": "drop",
    "source_labels": ["__meta_kubernetes_pod_phase"],
    "regex": "(Failed|Succeeded)",
}
_INIT = {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}


def _base_config(
    job_name: str, endpoint: Mapping[str, Any], options: ScrapeOptions, targets_file: Path
) -> dict[str, Any]:
    unsupported = [f for f in _UNSUPPORTED_ENDPOINT_FIELDS if endpoint.get(f)]
    if unsupported:
        raise UnsupportedMonitor(f"{job_name}: {', '.join(unsupported)} not emulated")
    config: dict[str, Any] = {"job_name": job_name}
    if endpoint.get("honorLabels"):
        config["honor_labels"] = True
    if endpoint.get("honorTimestamps") is not None:
        config["honor_timestamps"] = bool(endpoint["honorTimestamps"])
    config["file_sd_configs"] = [{"files": [str(targets_file)]}]
    interval = endpoint.get("interval")
    timeout = endpoint.get("scrapeTimeout")
    if options.interval is not None:
        interval = format_duration(options.interval)
        if timeout is None or parse_duration(timeout) > options.interval:
            timeout = interval
    if interval:
        config["scrape_interval"] = interval
    if timeout:
        config["scrape_timeout"] = timeout
    if endpoint.get("path"):
        config["metrics_path"] = endpoint["path"]
    if endpoint.get("params"):
        config["params"] = endpoint["params"]
    if endpoint.get("scheme"):
        if endpoint["scheme"] != "http":
            raise UnsupportedMonitor(f"{job_name}: scheme {endpoint['scheme']} not emulated")
        config["scheme"] = endpoint["scheme"]
    return config


def _keep(label: str, regex: str) -> dict[str, Any]:
    return {"action": "keep", "source_labels": [label], "regex": regex}


def _copy(source: str, target: str) -> dict[str, Any]:
    return {"source_labels": [source], "target_label": target}


def _service_rules(
    spec: Mapping[str, Any], endpoint: Mapping[str, Any], monitor: Mapping[str, Any]
) -> list[Any]:
    """generateServiceMonitorConfig's relabelling up to the job label (role endpoints)."""
    rules: list[Any] = [_INIT, *_selector_relabelings(spec.get("selector"), "service")]
    if endpoint.get("port"):
        rules.append(_keep("__meta_kubernetes_endpoint_port_name", endpoint["port"]))
    elif endpoint.get("targetPort") is not None:
        rules.append(_target_port_rule(endpoint["targetPort"]))
    kind_name = [
        "__meta_kubernetes_endpoint_address_target_kind",
        "__meta_kubernetes_endpoint_address_target_name",
    ]
    for kind, label in (("Node", "node"), ("Pod", "pod")):
        rules.append(
            {
                "source_labels": kind_name,
                "separator": ";",
                "regex": f"{kind};(.*)",
                "replacement": "${1}",
                "target_label": label,
            }
        )
    rules += [
        _copy("__meta_kubernetes_namespace", "namespace"),
        _copy("__meta_kubernetes_service_name", "service"),
        _copy("__meta_kubernetes_pod_name", "pod"),
        _copy("__meta_kubernetes_pod_container_name", "container"),
    ]
    if endpoint.get("filterRunning", True):
        rules.append(_RUNNING_FILTER)
    rules += _target_label_rules("service", spec.get("targetLabels"))
    rules += _target_label_rules("pod", spec.get("podTargetLabels"))
    rules.append({**_copy("__meta_kubernetes_service_name", "job"), "replacement": "${1}"})
    return rules


def _pod_rules(spec: Mapping[str, Any], endpoint: Mapping[str, Any], monitor: Mapping[str, Any]) -> list[Any]:
    """generatePodMonitorConfig's relabelling up to the job label (role pod)."""
    rules: list[Any] = [_INIT]
    if endpoint.get("filterRunning", True):
        rules.append(_RUNNING_FILTER)
    rules += _selector_relabelings(spec.get("selector"), "pod")
    if endpoint.get("port"):
        rules.append(_keep("__meta_kubernetes_pod_container_port_name", endpoint["port"]))
    elif endpoint.get("portNumber"):
        rules.append(_keep("__meta_kubernetes_pod_container_port_number", str(endpoint["portNumber"])))
    elif endpoint.get("targetPort") is not None:
        rules.append(_target_port_rule(endpoint["targetPort"]))
    rules += [
        _copy("__meta_kubernetes_namespace", "namespace"),
        _copy("__meta_kubernetes_pod_container_name", "container"),
        _copy("__meta_kubernetes_pod_name", "pod"),
    ]
    rules += _target_label_rules("pod", spec.get("podTargetLabels"))
    meta = monitor["metadata"]
    rules.append({"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"})
    return rules


_FLAVOURS: dict[str, tuple[str, Role, str, Any]] = {
    # kind: (job name prefix, discovery role, field listing the endpoints, relabelling)
    "ServiceMonitor": ("serviceMonitor", "endpoints", "endpoints", _service_rules),
    "PodMonitor": ("podMonitor", "pod", "podMetricsEndpoints", _pod_rules),
}


def monitor_jobs(monitor: Mapping[str, Any], targets_dir: Path, options: ScrapeOptions) -> list[ScrapeJob]:
    """One scrape job per endpoint of a ServiceMonitor or PodMonitor."""
    prefix, role, field_name, relabelling = _FLAVOURS[monitor["kind"]]
    meta, spec = monitor["metadata"], monitor.get("spec") or {}
    jobs = []
    for index, endpoint in enumerate(spec.get(field_name) or []):
        job = ScrapeJob(f"{prefix}/{meta['namespace']}/{meta['name']}/{index}", role, namespaces_for(monitor))
        config = _base_config(job.name, endpoint, options, targets_dir / f"{job.file_name}.json")
        rules = relabelling(spec, endpoint, monitor)
        if spec.get("jobLabel"):
            rules += _job_label_rule("service" if role == "endpoints" else "pod", spec["jobLabel"])
        rules += _endpoint_label_rule(endpoint)
        rules += convert_relabelings(endpoint.get("relabelings"))
        job.config = {**config, "relabel_configs": rules, **_metric_relabelings(endpoint)}
        jobs.append(job)
    return jobs


def _target_port_rule(target_port: str | int) -> dict[str, Any]:
    if isinstance(target_port, int) or str(target_port).isdigit():
        return _keep("__meta_kubernetes_pod_container_port_number", str(target_port))
    return _keep("__meta_kubernetes_pod_container_port_name", str(target_port))


def _job_label_rule(source: str, label: str) -> list[dict[str, Any]]:
    return [
        {
            "source_labels": [f"__meta_kubernetes_{source}_label_{sanitize_label_name(label)}"],
            "target_label": "job",
            "regex": "(.+)",
            "replacement": "${1}",
        }
    ]


def _endpoint_label_rule(endpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
    name = endpoint.get("port") or (
        str(endpoint["targetPort"]) if endpoint.get("targetPort") is not None else ""
    )
    return [{"target_label": "endpoint", "replacement": name}] if name else []


def _metric_relabelings(endpoint: Mapping[str, Any]) -> dict[str, Any]:
    rules = convert_relabelings(endpoint.get("metricRelabelings"))
    return {"metric_relabel_configs": rules} if rules else {}


def rule_file(rule: Mapping[str, Any], *, max_for: float | None = None) -> tuple[str, dict[str, Any]]:
    """A PrometheusRule as prometheus-operator writes it: ``<ns>-<name>-<uid>``, its spec verbatim.

    ``max_for`` caps every alert's ``for`` (seconds) so that a test can see an alert fire
    without waiting the production duration; None keeps the rule as written.
    """
    meta = rule["metadata"]
    groups = [dict(group) for group in (rule.get("spec") or {}).get("groups") or []]
    if max_for is not None:
        for group in groups:
            group["rules"] = [_cap_for(r, max_for) for r in group.get("rules") or []]
    return f"{meta['namespace']}-{meta['name']}-{meta.get('uid', '')}", {"groups": groups}


def _cap_for(rule: Mapping[str, Any], max_for: float) -> dict[str, Any]:
    rule = dict(rule)
    if "for" in rule and parse_duration(rule["for"]) > max_for:
        rule["for"] = format_duration(max_for)
    return rule
