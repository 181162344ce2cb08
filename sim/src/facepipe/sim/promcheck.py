"""Does every dashboard panel and every alert find its series? Asked of a running Prometheus.

For each panel target of the operator chart's dashboards (Grafana variables set to their "All"
value, ``$__rate_interval`` and friends to the given windows), each dashboard variable query
(``label_values(<selector>, <label>)``) and each alert expression of its rules, this reports:

- ``series``: how many series the whole expression returns now;
- ``empty_selectors``: every metric selector inside it that matches nothing (a wrong metric
  name or label shows here, even inside a larger expression that returns nothing anyway);
- ``missing_labels``: labels the result is grouped by (``sum by (...)``, or the label of
  ``label_values``) that no returned series carries -- a panel split by a label that is not there.

A panel must return series; an alert, whose expression is a threshold that is usually not
crossed, must have every selector return series. :func:`empty_queries` lists the failures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import promql_parser
import yaml

from facepipe.sim.prometheus_server import PrometheusClient

OPERATOR_CHART = Path(__file__).resolve().parents[4] / "charts" / "face-pipeline-operator"
_LABEL_VALUES = re.compile(r"^\s*label_values\((.+),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


@dataclass(frozen=True)
class Query:
    kind: Literal["panel", "variable", "alert"]
    source: str
    expr: str
    group_labels: tuple[str, ...] = ()


@dataclass
class QueryCheck:
    query: Query
    series: int = 0
    empty_selectors: list[str] = field(default_factory=list)
    missing_labels: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        if self.error or self.empty_selectors or self.missing_labels:
            return False
        return self.query.kind == "alert" or self.series > 0

    def __str__(self) -> str:
        problems = [self.error] if self.error else []
        if self.query.kind != "alert" and not self.series:
            problems.append("returns no series")
        problems += [f"selector {s} matches nothing" for s in self.empty_selectors]
        problems += [f"no series has label {label!r}" for label in self.missing_labels]
        return f"{self.query.source}: {'; '.join(problems) or 'ok'}\n    {self.query.expr}"


# --- reading the queries -----------------------------------------------------------------------


def grafana_substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace ``$name`` / ``${name}`` (longest names first, so ``$__range_s`` beats ``$__range``)."""
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    leftover = re.search(r"\$\{?[a-zA-Z_]\w*", expr)
    if leftover:
        raise ValueError(f"unknown Grafana variable {leftover.group(0)} in {expr!r}")
    return expr


def dashboard_variables(dashboard: Mapping[str, Any], rate_interval: str) -> dict[str, str]:
    """Every query variable at its "All" value; Grafana's built-in intervals as given."""
    values = {
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": "1h",
        "__range_s": "3600",
    }
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") in ("query", "custom", "constant", "textbox"):
            values[variable["name"]] = str(variable.get("allValue") or ".*")
    return values


def dashboard_queries(path: Path, rate_interval: str = "1m") -> list[Query]:
    dashboard = json.loads(path.read_text())
    variables = dashboard_variables(dashboard, rate_interval)
    queries = []
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        definition = variable.get("definition") or (variable.get("query") or {}).get("query", "")
        match = _LABEL_VALUES.match(definition)
        if not match:
            raise ValueError(f"{path.name}: variable {variable['name']}: unsupported query {definition!r}")
        expr = grafana_substitute(match.group(1), variables)
        queries.append(
            Query("variable", f"{path.name} variable ${variable['name']}", expr, (match.group(2),))
        )
    for panel in _panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if not target.get("expr"):
                continue
            expr = grafana_substitute(target["expr"], variables)
            source = f"{path.name} panel {panel.get('title')!r} ({target.get('refId', '?')})"
            queries.append(Query("panel", source, expr, _grouping(expr)))
    return queries


def _panels(panels: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])  # collapsed rows hold their panels


def alert_queries(path: Path) -> list[Query]:
    groups = (yaml.safe_load(path.read_text()) or {}).get("groups") or []
    return [
        Query("alert", f"{path.name} alert {rule['alert']}", str(rule["expr"]).strip())
        for group in groups
        for rule in group.get("rules") or []
        if "alert" in rule
    ]


def chart_queries(chart: Path = OPERATOR_CHART, rate_interval: str = "1m") -> list[Query]:
    """Every dashboard query and alert expression the operator chart ships."""
    queries: list[Query] = []
    for path in sorted((chart / "dashboards").glob("*.json")):
        queries += dashboard_queries(path, rate_interval)
    for path in sorted((chart / "rules").glob("*.yaml")):
        queries += alert_queries(path)
    return queries


# --- PromQL structure --------------------------------------------------------------------------


def _children(node: Any) -> list[Any]:
    kind = type(node).__name__
    if kind == "AggregateExpr":
        return [node.expr] + ([node.param] if node.param is not None else [])
    if kind == "BinaryExpr":
        return [node.lhs, node.rhs]
    if kind in ("ParenExpr", "UnaryExpr", "SubqueryExpr"):
        return [node.expr]
    if kind == "MatrixSelector":
        return [node.vector_selector]
    if kind == "Call":
        return list(node.args)
    return []


def selectors(expr: str) -> list[str]:
    """Every vector selector of an expression, without range, offset or @ (in order, unique)."""
    found: list[str] = []
    stack = [promql_parser.parse(expr)]
    while stack:
        node = stack.pop(0)
        if type(node).__name__ == "VectorSelector":
            matchers = str(node.matchers)
            text = f"{node.name or ''}{matchers if matchers != '{}' or not node.name else ''}"
            if text not in found:
                found.append(text)
        stack[:0] = _children(node)
    return found


def _grouping(expr: str) -> tuple[str, ...]:
    """The ``by`` labels of the aggregation the result comes from (through parentheses and the
    left side of binary operations). An expression that does not parse has none: checking it
    reports Prometheus' own parse error."""
    try:
        node = promql_parser.parse(expr)
    except ValueError:
        return ()
    while True:
        kind = type(node).__name__
        if kind == "ParenExpr":
            node = node.expr
        elif kind == "BinaryExpr":
            node = node.lhs
        elif kind == "AggregateExpr":
            modifier = node.modifier
            if modifier is not None and str(modifier.type).endswith("By"):
                return tuple(modifier.labels)
            return ()
        else:
            return ()


# --- asking Prometheus -------------------------------------------------------------------------


def check(prometheus: PrometheusClient, query: Query) -> QueryCheck:
    result = QueryCheck(query)
    try:
        samples = prometheus.query(query.expr)
        result.series = len(samples)
        for selector in selectors(query.expr):
            if not prometheus.query(selector):
                result.empty_selectors.append(selector)
        if samples:
            result.missing_labels = [
                label for label in query.group_labels if not any(s["metric"].get(label) for s in samples)
            ]
    except Exception as exc:  # a query Prometheus rejects is a finding, not a crash
        result.error = str(exc)
    return result


def check_all(prometheus: PrometheusClient, queries: list[Query]) -> list[QueryCheck]:
    return [check(prometheus, query) for query in queries]


def empty_queries(
    prometheus: PrometheusClient, chart: Path = OPERATOR_CHART, rate_interval: str = "1m"
) -> list[QueryCheck]:
    """The chart's dashboard queries and alert expressions that find no series (or fail)."""
    return [result for result in check_all(prometheus, chart_queries(chart, rate_interval)) if not result.ok]


def main(argv: list[str] | None = None) -> int:
    """``python -m facepipe.sim.promcheck http://127.0.0.1:PORT``: list what finds no series."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m facepipe.sim.promcheck", description=main.__doc__)
    parser.add_argument("prometheus", help="Prometheus base URL")
    parser.add_argument("--chart", type=Path, default=OPERATOR_CHART, help="the operator chart folder")
    parser.add_argument("--rate-interval", default="1m", help="$__rate_interval (4 x scrape)")
    args = parser.parse_args(argv)
    results = check_all(PrometheusClient(args.prometheus), chart_queries(args.chart, args.rate_interval))
    failing = [r for r in results if not r.ok]
    for result in failing:
        print(result)
    print(f"{len(results) - len(failing)} of {len(results)} queries find their series")
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
