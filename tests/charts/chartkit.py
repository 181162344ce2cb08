"""Helpers for the chart, alert and dashboard tests: rendering, validation, PromQL names.

Imported by the tests in this folder (tests/charts/conftest.py puts the folder on sys.path).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import promql_parser
import yaml
from helm_python import _native
from kubekit import helm_install  # noqa: F401  (re-exported for the chart tests)

from facepipe.cli.programs import find_program

REPO = Path(__file__).resolve().parents[2]
OPERATOR_CHART = REPO / "charts" / "face-pipeline-operator"
TENANT_CHART = REPO / "charts" / "face-pipeline"
CRD_FILE = REPO / "crds" / "facepipelines.facepipe.io.yaml"
RULES_FILE = OPERATOR_CHART / "rules" / "facepipe-alerts.yaml"
ADAPTER_FILE = OPERATOR_CHART / "adapter" / "prometheus-adapter-values.yaml"
DASHBOARD_DIR = OPERATOR_CHART / "dashboards"
ALERTS_DOC = REPO / "docs" / "alerts.md"
KUBE_VERSION = "1.33.0"

# Series the services do not export and never will: kube-state-metrics (replicas, Deployment
# labels) and Prometheus' own `up`. Everything else a dashboard, alert or adapter rule reads
# must be on the services' /metrics.
EXTERNAL_METRIC = re.compile(r"^(kube_[a-z0-9_]+|up)$")


def values_sets(chart: Path) -> dict[str, dict[str, Any]]:
    """The chart's ci/<name>-values.yaml files (chart-testing's convention), by name."""
    return {
        path.name.removesuffix("-values.yaml"): yaml.safe_load(path.read_text()) or {}
        for path in sorted((chart / "ci").glob("*-values.yaml"))
    }


@functools.lru_cache(maxsize=4)
def _load_chart(chart: Path) -> helm.Chart:
    return helm.Chart.load(str(chart))


# What a cluster with prometheus-operator adds to discovery (Helm's .Capabilities.APIVersions).
MONITORING_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
MONITORING_APIS = [f"monitoring.coreos.com/v1/{kind}" for kind in MONITORING_KINDS]


def render_files(
    chart: Path,
    values: dict[str, Any],
    name: str = "test",
    namespace: str = "facepipe",
    api_versions: list[str] | None = None,
) -> dict[str, str]:
    """The real Helm engine's output by template path; ``api_versions`` as `helm template --api-versions`.

    helm-python-sdk's Chart.render does not forward API versions; its native call takes them.
    """
    options: dict[str, Any] = {"name": name, "namespace": namespace}
    if api_versions:
        options["api_versions"] = list(api_versions)
    payload = _native.call_string(
        "helm_render", _load_chart(chart)._raw(), json.dumps(values), json.dumps(options)
    )
    return dict(json.loads(payload))


def render(
    chart: Path,
    values: dict[str, Any],
    name: str = "test",
    namespace: str = "facepipe",
    api_versions: list[str] | None = None,
) -> list[dict]:
    """Render with the real Helm engine; every non-empty YAML document of every template."""
    rendered = render_files(chart, values, name, namespace, api_versions)
    docs: list[dict] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def lint_problems(chart: Path, values: dict[str, Any]) -> list[str]:
    """`helm lint --strict --kube-version v1.33.0`: warnings and errors (infos are fine)."""
    report = helm.lint(str(chart), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    return list(report["errors"]) + [
        f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2
    ]


def validate_builtin(doc: dict[str, Any]) -> None:
    """kubernetes-validate, strict, Kubernetes 1.33; raises on any problem."""
    kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def is_custom_resource(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
    return group.endswith(("monitoring.coreos.com", "facepipe.io", "keda.sh"))


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_FILE.read_text())


@functools.lru_cache(maxsize=1)
def _crd_validator() -> jsonschema.Draft7Validator:
    version = next(v for v in crd()["spec"]["versions"] if v["storage"])
    return jsonschema.Draft7Validator(version["schema"]["openAPIV3Schema"])


def crd_errors(document: dict[str, Any]) -> list[str]:
    """What the CRD's own OpenAPI v3 schema says about a FacePipeline (CEL rules aside)."""
    validator = _crd_validator()
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --------------------------------------------------------------------------- PromQL names


def _walk(node: Any) -> Iterator[Any]:
    """Every node of a promql_parser AST."""
    yield node
    kind = type(node).__name__
    if kind in {"AggregateExpr"}:
        yield from _walk(node.expr)
        if node.param is not None:
            yield from _walk(node.param)
    elif kind == "BinaryExpr":
        yield from _walk(node.lhs)
        yield from _walk(node.rhs)
    elif kind in {"ParenExpr", "UnaryExpr", "SubqueryExpr"}:
        yield from _walk(node.expr)
    elif kind == "MatrixSelector":
        yield from _walk(node.vector_selector)
    elif kind == "Call":
        for arg in node.args:
            yield from _walk(arg)
    elif kind in {"VectorSelector", "NumberLiteral", "StringLiteral"}:
        return
    else:
        raise TypeError(f"unknown PromQL node {kind}")


def _regex_names(pattern: str) -> set[str]:
    """Metric names a `__name__=~"a|b"` matcher stands for; only plain alternations are allowed."""
    names = set(pattern.split("|"))
    for name in names:
        if not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name):
            raise ValueError(f"__name__ regex {pattern!r} is not a plain list of names")
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Every metric name an expression reads (parsed, not grepped)."""
    names: set[str] = set()
    for node in _walk(promql_parser.parse(expr)):
        if type(node).__name__ != "VectorSelector":
            continue
        if node.name:
            names.add(node.name)
        for matcher in node.matchers.matchers:
            if matcher.name == "__name__":
                op = str(matcher.op).rsplit(".", 1)[-1]
                if op == "Re":
                    names |= _regex_names(matcher.value)
                elif op == "Equal":
                    names.add(matcher.value)
                else:
                    raise ValueError(f"unsupported __name__ matcher in {expr!r}")
    return names


GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$namespace": "ns",
    "$tenant": "acme",
}


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    if "$" in expr.replace("$1", ""):
        raise ValueError(f"unknown Grafana variable left in {expr!r}")
    return expr


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    """Panel queries (Grafana variables substituted) and the metrics behind label_values()."""
    exprs = [
        grafana_to_promql(target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        # The query Grafana runs: a Prometheus variable query object, or a plain string in
        # older dashboards. (`definition` is only its display text, and not in the schema.)
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((.+),\s*[a-zA-Z_]+\)", text)
        assert match, f"unexpected variable query {text!r}"
        exprs.append(grafana_to_promql(match.group(1)))
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def adapter_exprs() -> list[str]:
    """prometheus-adapter queries with its template placeholders filled as the adapter would."""
    rules = yaml.safe_load(ADAPTER_FILE.read_text())["rules"]["external"]
    exprs = []
    for rule in rules:
        exprs.append(rule["seriesQuery"])
        query = rule["metricsQuery"]
        query = query.replace("<<.Series>>", "facepipe_stream_lag")
        query = query.replace("<<.LabelMatchers>>", 'namespace="acme",tenant="acme",stream_role="ingest"')
        query = query.replace("<<.GroupBy>>", "namespace")
        exprs.append(query)
    return exprs


def promtool(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_program("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


# --------------------------------------------------------------------------- /metrics names


def exposed_names(exposition: str) -> set[str]:
    """Every series name a Prometheus text exposition can produce.

    A family's samples appear only once a label set is used, so the names come from the
    `# TYPE` lines as well as the samples: a counter is `<name>_total`, a histogram
    `<name>_bucket/_sum/_count`, a summary `<name>`, `_sum`, `_count`.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            elif kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
