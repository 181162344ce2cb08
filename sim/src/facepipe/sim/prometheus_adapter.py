"""prometheus-adapter's external metrics, evaluated against the simulation's Prometheus.

Reproduces kubernetes-sigs/prometheus-adapter's external provider (pkg/external-provider,
pkg/naming) for the ``externalRules`` the operator chart ships:

- discovery: every ``relist_interval`` the adapter lists the series matching each rule's
  ``seriesQuery`` (``/api/v1/series``, looking back ``max_age``), keeps those passing
  ``seriesFilters`` and ``name.matches``, and names each metric by ``name.as`` (Go regexp
  expansion); a metric nobody has exported yet is "not found", as in the cluster;
- a request ``(namespace, metric, selector)`` fills the rule's ``metricsQuery`` template
  (``<<.Series>>``, ``<<.LabelMatchers>>``, ``<<.GroupBy>>``...): the HPA's selector
  requirements sorted by key become PromQL matchers (``=`` for matchLabels, ``=~`` for ``In``,
  ``!=""`` for ``Exists``...), then ``namespace="<ns>"`` when the rule is namespaced;
- the instant query's samples become values in thousandths (``int64(value*1000)``), which
  the HPA adds up.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from facepipe.sim.kubeutil import LabelSelector, Requirement
from facepipe.sim.prometheus_server import PrometheusClient

_TEMPLATE_FIELD = re.compile(r"<<\s*(.*?)\s*>>")
_GO_EXPAND = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


class MetricNotFound(LookupError):
    """The adapter serves no external metric of that name (no matching series seen yet)."""


class UnsupportedQuery(ValueError):
    """A selector or template the adapter itself would refuse."""


@dataclass(frozen=True)
class ExternalValue:
    labels: dict[str, str]
    milli_value: int


@dataclass
class _Rule:
    series_query: str
    metrics_query: str
    name_matches: re.Pattern[str]
    name_as: str
    filters: list[tuple[re.Pattern[str], bool]]
    namespace_label: str | None  # None: the rule's queries are not namespaced

    @classmethod
    def parse(cls, rule: Mapping[str, Any]) -> _Rule:
        name = rule.get("name") or {}
        matches = re.compile(name.get("matches") or ".*")
        name_as = name.get("as") or ""
        if not name_as:
            groups = matches.groups
            if groups > 1:
                raise UnsupportedQuery(f"name.matches {matches.pattern!r} needs an 'as'")
            name_as = "$1" if groups == 1 else "$0"
        filters = []
        for item in rule.get("seriesFilters") or []:
            if bool(item.get("is")) == bool(item.get("isNot")):
                raise UnsupportedQuery("a series filter needs exactly one of is / isNot")
            filters.append((re.compile(item.get("is") or item["isNot"]), bool(item.get("is"))))
        if name.get("matches"):
            filters.append((matches, True))
        resources = rule.get("resources") or {}
        namespace_label: str | None = "namespace"
        for label, target in (resources.get("overrides") or {}).items():
            if target.get("resource") in ("namespace", "namespaces") and not target.get("group"):
                namespace_label = label
        if resources.get("namespaced") is False:
            namespace_label = None
        return cls(rule["seriesQuery"], rule["metricsQuery"], matches, name_as, filters, namespace_label)

    def accepts(self, series_name: str) -> bool:
        return all(bool(regex.search(series_name)) == positive for regex, positive in self.filters)

    def metric_name(self, series_name: str) -> str:
        match = self.name_matches.search(series_name)
        if match is None:
            raise UnsupportedQuery(f"series {series_name!r} does not match {self.name_matches.pattern!r}")
        return _GO_EXPAND.sub(lambda m: match.group(_group_ref(m.group(1) or m.group(2))) or "", self.name_as)


def _group_ref(ref: str) -> int | str:
    return int(ref) if ref.isdigit() else ref


def _matcher(term: Requirement) -> str:
    """selectMatcher / selectTargetValue of pkg/naming/metrics_query.go."""
    if term.operator == "Exists":
        return f'{term.key}!=""'
    if term.operator == "DoesNotExist":
        return f'{term.key}=""'
    if term.operator == "Equals" and len(term.values) == 1:
        op = "="
    elif term.operator in ("Equals", "In"):
        op = "=~"
    elif term.operator == "NotIn":
        op = "!~"
    else:
        raise UnsupportedQuery(f"operator {term.operator} not supported by the query builder")
    return f"{term.key}{op}{_go_quote('|'.join(term.values))}"


def _go_quote(value: str) -> str:
    """Go's %q for the printable strings label values are."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _render(template: str, args: Mapping[str, Any]) -> str:
    def field(match: re.Match[str]) -> str:
        path = match.group(1)
        if not path.startswith("."):
            raise UnsupportedQuery(f"template action <<{path}>> is not emulated")
        value: Any = args
        for part in path[1:].split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise UnsupportedQuery(f"template field <<{path}>> is unknown")
            value = value[part]
        return str(value)

    return _TEMPLATE_FIELD.sub(field, template)


class PrometheusAdapter:
    """The external metrics API of prometheus-adapter over one Prometheus."""

    def __init__(
        self,
        prometheus: PrometheusClient,
        external_rules: list[Mapping[str, Any]],
        *,
        relist_interval: float = 10.0,
        max_age: float = 600.0,
    ) -> None:
        self.prometheus = prometheus
        self.rules = [_Rule.parse(rule) for rule in external_rules]
        self.relist_interval = relist_interval
        self.max_age = max_age
        self._registry: dict[str, tuple[str, _Rule]] = {}
        self._listed_at = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, prometheus: PrometheusClient, path: Path, **kwargs: Any) -> PrometheusAdapter:
        """From the chart's adapter values file (``rules.external``) or a ``--config`` file
        (``externalRules``)."""
        document = yaml.safe_load(Path(path).read_text()) or {}
        rules = (document.get("rules") or {}).get("external") or document.get("externalRules") or []
        if not rules:
            raise ValueError(f"{path} holds no external rules")
        return cls(prometheus, rules, **kwargs)

    def relist(self) -> None:
        """basicMetricLister.ListAllMetrics + filterAndStoreMetrics."""
        start = time.time() - self.max_age
        registry: dict[str, tuple[str, _Rule]] = {}
        by_query: dict[str, list[dict[str, str]]] = {}
        for rule in self.rules:
            if rule.series_query not in by_query:
                by_query[rule.series_query] = self.prometheus.series(rule.series_query, start=start)
            for series in by_query[rule.series_query]:
                name = series.get("__name__", "")
                if rule.accepts(name):
                    registry[rule.metric_name(name)] = (name, rule)
        with self._lock:
            self._registry = registry
            self._listed_at = time.monotonic()

    def _lookup(self, metric: str) -> tuple[str, _Rule]:
        if time.monotonic() - self._listed_at >= self.relist_interval:
            self.relist()
        with self._lock:
            found = self._registry.get(metric)
        if found is None:
            raise MetricNotFound(f'external metric "{metric}" not found')
        return found

    def metric_names(self) -> list[str]:
        if time.monotonic() - self._listed_at >= self.relist_interval:
            self.relist()
        with self._lock:
            return sorted(self._registry)

    def query_for(self, namespace: str, metric: str, selector: LabelSelector) -> str:
        """The PromQL the adapter sends for one request (QueryForExternalSeries)."""
        series, rule = self._lookup(metric)
        terms = list(selector.requirements)
        if rule.namespace_label and namespace:
            terms.append(Requirement(rule.namespace_label, "Equals", (namespace,)))
        matchers = [_matcher(term) for term in terms]
        by_name = {term.key: "|".join(term.values) for term in terms}
        args = {
            "Series": series,
            "LabelMatchers": ",".join(matchers),
            "LabelValuesByName": by_name,
            "GroupBy": "",
            "GroupBySlice": [],
        }
        query = _render(rule.metrics_query, args)
        if not query:
            raise UnsupportedQuery("empty query produced by metrics query template")
        return query

    def external_metric(self, namespace: str, metric: str, selector: LabelSelector) -> list[ExternalValue]:
        """GetExternalMetric: one value per sample of the query (a scalar gives one)."""
        values = []
        for sample in self.prometheus.query(self.query_for(namespace, metric, selector)):
            value = float(sample["value"][1])
            if value != value:  # NaN: Go's int64(NaN*1000) is garbage; the sample is left out
                continue
            values.append(ExternalValue(dict(sample.get("metric") or {}), int(value * 1000.0)))
        return values
