"""charts/face-pipeline-operator rendered by the real Helm engine, linted, validated for 1.33."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from chartkit import (
    ADAPTER_FILE,
    CRD_FILE,
    DASHBOARD_DIR,
    MONITORING_APIS,
    MONITORING_KINDS,
    OPERATOR_CHART,
    RULES_FILE,
    helm_install,
    is_custom_resource,
    lint_problems,
    render,
    validate_builtin,
    values_sets,
)
from kubekit import restricted_violations

from facepipe.cli.ports import launch, with_free_ports

VALUES = values_sets(OPERATOR_CHART)
NAMESPACE = "facepipe-system"


def render_in_cluster(values: dict[str, Any]) -> list[dict]:
    """The operator chart as `helm install` renders it on a cluster with prometheus-operator."""
    return render(OPERATOR_CHART, values, name="fpo", namespace=NAMESPACE, api_versions=MONITORING_APIS)


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def test_values_sets_exist() -> None:
    assert {"minimal", "full", "keda"} <= VALUES.keys()


def test_chart_crd_is_a_byte_copy_of_crds() -> None:
    copy = OPERATOR_CHART / "crds" / CRD_FILE.name
    assert copy.read_bytes() == CRD_FILE.read_bytes(), "run: make charts-sync-crds"
    # Helm installs it from the chart's crds/ (before any template, never templated).
    crds = helm.Chart.load(str(OPERATOR_CHART)).crds
    assert [c["name"] for c in crds] == [f"crds/{CRD_FILE.name}"]
    assert crds[0]["data"] == CRD_FILE.read_text()
    validate_builtin(yaml.safe_load(crds[0]["data"]))  # a CustomResourceDefinition is a built-in kind


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_lint_strict_is_clean(values_name: str) -> None:
    assert lint_problems(OPERATOR_CHART, VALUES[values_name]) == []


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_every_builtin_document_is_valid_for_kubernetes_1_33(values_name: str) -> None:
    docs = render_in_cluster(VALUES[values_name])
    builtin = [d for d in docs if not is_custom_resource(d)]
    assert by_kind(builtin, "Deployment") and by_kind(builtin, "ServiceAccount")
    for doc in builtin:
        validate_builtin(doc)
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "face-pipeline"


def test_validation_would_catch_a_bad_document() -> None:
    docs = render_in_cluster({})
    deployment = one(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # a typo
    with pytest.raises(Exception, match="imagePullPolcy"):
        validate_builtin(deployment)


def test_operator_deployment_runs_one_unprivileged_kopf() -> None:
    docs = render_in_cluster({})
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert container["command"] == ["python", "-m", "facepipe.operator"]
    # Every namespace, standalone: the defaults of python -m facepipe.operator.
    assert container["args"] == ["--liveness=http://0.0.0.0:8080/healthz"]
    assert container["image"] == "ghcr.io/face-pipeline/operator:0.1.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_operator_pod_passes_pod_security_restricted(values_name: str) -> None:
    docs = render_in_cluster(VALUES[values_name])
    assert restricted_violations(one(docs, "Deployment")["spec"]["template"]["spec"]) == []


def test_more_than_one_replica_is_refused() -> None:
    with pytest.raises(helm.HelmValuesError, match="replicaCount"):
        render(OPERATOR_CHART, {"replicaCount": 2})
    with pytest.raises(helm.HelmValuesError, match="additional properties"):
        render(OPERATOR_CHART, {"monitoring": {"podMonitr": {"enabled": False}}})


def rules_of(docs: list[dict]) -> list[dict[str, Any]]:
    return [rule for kind in ("ClusterRole", "Role") for doc in by_kind(docs, kind) for rule in doc["rules"]]


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_rbac_is_least_privilege(values_name: str) -> None:
    docs = render_in_cluster(VALUES[values_name])
    rules = rules_of(docs)
    assert rules
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        if "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"], "secrets: read one by name, never list or watch"
        if "customresourcedefinitions" in rule["resources"] or "namespaces" in rule["resources"]:
            assert set(rule["verbs"]) <= {"list", "watch"} or (
                rule["verbs"] == ["get"] and rule["resourceNames"] == ["facepipelines.facepipe.io"]
            )
        assert (
            "escalate" not in rule["verbs"]
            and "bind" not in rule["verbs"]
            and "impersonate" not in rule["verbs"]
        )
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert ("facepipe.io", "facepipelines/status") in granted
    # Children carry blockOwnerDeletion: OwnerReferencesPermissionEnforcement (OpenShift) checks this.
    assert any(
        rule["resources"] == ["facepipelines/finalizers"] and "update" in rule["verbs"] for rule in rules
    )
    assert ("apps", "deployments") in granted and ("autoscaling", "horizontalpodautoscalers") in granted
    assert (("keda.sh", "scaledobjects") in granted) == VALUES[values_name].get("rbac", {}).get("keda", True)
    # Bindings point at the chart's own ServiceAccount.
    sa = one(docs, "ServiceAccount")["metadata"]
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}]


def test_watching_listed_namespaces_grants_only_there() -> None:
    values = VALUES["full"]
    watched = values["operator"]["watchNamespaces"]
    docs = render_in_cluster(values)
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    # The one ClusterRole left is read-only discovery.
    cluster_rules = [rule for doc in by_kind(docs, "ClusterRole") for rule in doc["rules"]]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [f"--namespace={n}" for n in watched]
    assert "--verbose" in args and "--debug" in args


def test_secrets_are_never_readable_cluster_wide() -> None:
    """Cluster-wide: no Secret access at all, unless granted namespace by namespace."""
    docs = render_in_cluster({})
    for role in by_kind(docs, "ClusterRole"):
        assert not [r for r in role["rules"] if "secrets" in r["resources"]], role["metadata"]["name"]
    granted = render_in_cluster({"rbac": {"secretNamespaces": ["acme", "globex"]}})
    roles = by_kind(granted, "ClusterRole")
    secrets_role = next(r for r in roles if r["metadata"]["name"].endswith("-secrets"))
    assert secrets_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    name = secrets_role["metadata"]["name"]
    bindings = [b for b in by_kind(granted, "RoleBinding") if b["roleRef"]["name"] == name]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["acme", "globex"]
    assert not [b for b in by_kind(granted, "ClusterRoleBinding") if b["roleRef"]["name"] == name]
    # Watching listed namespaces: Secrets in those Roles only.
    namespaced = render_in_cluster({"operator": {"watchNamespaces": ["acme"]}})
    (role,) = by_kind(namespaced, "Role")
    assert role["metadata"]["namespace"] == "acme"
    assert any(r["resources"] == ["secrets"] and r["verbs"] == ["get"] for r in role["rules"])


def test_cluster_wide_operator_does_not_list_namespaces() -> None:
    docs = render_in_cluster({})
    assert not by_kind(docs, "Role")
    resources = {r for rule in rules_of(docs) for r in rule["resources"]}
    assert "namespaces" not in resources  # Kopf only lists namespaces when given a list of them


def test_monitors_select_what_the_operator_creates() -> None:
    """Selectors, ports and relabelling match the pods/Services of facepipe.operator.builders."""
    docs = render_in_cluster({})
    pod_monitor = one(docs, "PodMonitor")["spec"]
    service_monitor = one(docs, "ServiceMonitor")["spec"]
    assert pod_monitor["namespaceSelector"] == {"any": True}
    expressions = {e["key"]: e for e in pod_monitor["selector"]["matchExpressions"]}
    assert set(expressions["app.kubernetes.io/component"]["values"]) == {"detector", "embedder", "indexer"}
    assert expressions["facepipe.io/tenant"]["operator"] == "Exists"
    assert pod_monitor["podMetricsEndpoints"][0]["port"] == "metrics"
    assert service_monitor["selector"]["matchLabels"] == {"app.kubernetes.io/component": "ops-api"}
    assert service_monitor["endpoints"][0]["port"] == "http"
    for endpoint in (pod_monitor["podMetricsEndpoints"][0], service_monitor["endpoints"][0]):
        relabel = {r["targetLabel"]: r["sourceLabels"] for r in endpoint["relabelings"]}
        assert relabel["tenant"] == ["__meta_kubernetes_pod_label_facepipe_io_tenant"]
        assert relabel["component"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    # stream_role comes from ops-api (Settings.streams_by_role): a suffix rule here would mislabel
    # custom stream names (DETECTED_STREAM_NAME=faces-found would become "ingest").
    assert "stream_role" not in json.dumps(service_monitor)


def test_monitors_match_the_operator_builders() -> None:
    """The operator's own builders produce pods and Services these monitors find."""
    from facepipe.operator import builders
    from facepipe.operator.constants import BACKLOG_METRIC, INPUT_ROLE
    from facepipe.operator.validation import parse_spec

    spec = parse_spec(
        "acme",
        {
            "tenantId": "acme",
            "redis": {"url": "redis://r:6379/0"},
            "storage": {"endpoint": "minio:9000"},
            "vectorDb": {"url": "http://q:6333"},
            "components": {"detector": {"autoscaling": {"enabled": True}}},
        },
    )
    owner = builders.PipelineRef(name="acme", namespace="acme", uid="0000")
    children = builders.build_children(owner, spec)
    for child in children:
        if child["kind"] == "Deployment":
            pod = child["spec"]["template"]
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            assert pod["metadata"]["labels"]["facepipe.io/tenant"] == "acme"
            ports = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
            assert ("http" if component == "ops-api" else "metrics") in ports
        if (
            child["kind"] == "Service"
            and child["metadata"]["labels"].get("app.kubernetes.io/component") == "ops-api"
        ):
            assert child["spec"]["ports"][0]["name"] == "http"
        if child["kind"] == "HorizontalPodAutoscaler":
            metric = child["spec"]["metrics"][0]["external"]["metric"]
            assert metric["name"] == BACKLOG_METRIC
            assert metric["selector"]["matchLabels"] == {
                "stream_role": INPUT_ROLE["detector"],
                "tenant": "acme",
            }
    adapter = yaml.safe_load(ADAPTER_FILE.read_text())["rules"]["external"]
    assert [rule["name"]["as"] for rule in adapter] == [BACKLOG_METRIC]
    assert 'stream_role!=""' in adapter[0]["seriesQuery"] and "tenant" in adapter[0]["metricsQuery"]


def test_prometheus_rule_is_the_tested_rule_file() -> None:
    docs = render_in_cluster({})
    rule = one(docs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
    # Prometheus' {{ $labels }} templates must survive Helm untouched.
    assert "{{ $labels.stage }}" in json.dumps(rule)


def test_dashboards_ship_as_sidecar_configmaps() -> None:
    docs = render_in_cluster({})
    dashboards = [d for d in by_kind(docs, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]]
    files = {p.name: p.read_text() for p in DASHBOARD_DIR.glob("*.json")}
    assert len(dashboards) == len(files) >= 2
    for configmap in dashboards:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = configmap["data"].items()
        assert json.loads(text) == json.loads(files[name])
    full = render_in_cluster(VALUES["full"])
    for configmap in [
        d for d in by_kind(full, "ConfigMap") if "grafana_dashboard" in d["metadata"]["labels"]
    ]:
        assert configmap["metadata"]["namespace"] == "monitoring"
        assert configmap["metadata"]["annotations"]["grafana_folder"] == "Face pipeline"


def test_adapter_configmap_carries_the_adapter_rules() -> None:
    docs = render_in_cluster({})
    (configmap,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-adapter-rules")]
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert config["externalRules"] == yaml.safe_load(ADAPTER_FILE.read_text())["rules"]["external"]
    assert "<<.LabelMatchers>>" in config["externalRules"][0]["metricsQuery"]


def test_monitoring_objects_can_be_switched_off() -> None:
    docs = render_in_cluster(VALUES["keda"])
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert not [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-adapter-rules")]


def test_operator_starts_with_the_charts_command_and_args(tmp_path: Path) -> None:
    """The chart's command line, run for real against the Kubernetes API emulator: Kopf answers
    its liveness probe, so every option the chart passes is one the operator understands."""
    from facepipe.sim.emulator import EmulatorServer, write_kubeconfig

    server = EmulatorServer([OPERATOR_CHART / "crds" / CRD_FILE.name])
    server.start()
    env = {**os.environ, "KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", server.url))}

    def start(port: int) -> subprocess.Popen:
        """The chart's container, its liveness probe on ``port``: up once Kopf answers it with 200."""
        values = {"operator": {"watchNamespaces": ["acme"], "verbose": True, "livenessPort": port}}
        container = one(render_in_cluster(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][0] == "python"
        command = [sys.executable, *container["command"][1:], *container["args"]]
        liveness = f"http://127.0.0.1:{port}{container['livenessProbe']['httpGet']['path']}"

        def alive() -> bool:
            with urllib.request.urlopen(liveness, timeout=5) as response:
                return bool(response.status == 200)

        return launch("the operator", command, tmp_path / "operator.log", [port], alive, timeout=90, env=env)

    try:
        proc = with_free_ports(start)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    finally:
        server.stop()


# --------------------------------------------------------------------------- helm install, for real


def _cluster(*, prometheus_operator: bool) -> Any:
    """An API server (the emulator) with our CRD, and prometheus-operator's kinds when asked."""
    from facepipe.sim.emulator import EmulatorServer

    return EmulatorServer([CRD_FILE], keda=False, monitoring=prometheus_operator)


def _installed_kinds(release: dict[str, Any]) -> set[str]:
    return {doc["kind"] for doc in yaml.safe_load_all(release["manifest"]) if doc}


def test_helm_install_works_on_a_cluster_without_prometheus_operator(tmp_path: Path) -> None:
    """kind, minikube, a fresh cluster: no monitoring.coreos.com. The install must not fail on it."""
    from facepipe.operator.kube import DEPLOYMENT, KubeApi
    from facepipe.sim.emulator import write_kubeconfig

    with _cluster(prometheus_operator=False) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        release = helm_install(OPERATOR_CHART, {}, kubeconfig, "fpo", NAMESPACE)
        kinds = _installed_kinds(release)
        assert not kinds & set(MONITORING_KINDS)
        assert {"Deployment", "ServiceAccount", "ClusterRole"} <= kinds
        assert "Not installed: PodMonitor, PrometheusRule, ServiceMonitor" in release["notes"]
        api = KubeApi.from_environment(str(kubeconfig))
        try:
            assert api.get(DEPLOYMENT, NAMESPACE, "fpo-face-pipeline-operator") is not None
        finally:
            api.close()


def test_helm_install_adds_the_monitors_where_prometheus_operator_runs(tmp_path: Path) -> None:
    from facepipe.sim.emulator import write_kubeconfig

    with _cluster(prometheus_operator=True) as server:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
        release = helm_install(OPERATOR_CHART, {}, kubeconfig, "fpo", NAMESPACE)
        assert set(MONITORING_KINDS) <= _installed_kinds(release)
        assert "Not installed" not in release["notes"]


def test_monitors_can_be_rendered_offline_when_asked() -> None:
    """`helm template` sees no cluster: nothing unless --api-versions or skipCapabilityCheck says so."""
    kinds = {d["kind"] for d in render(OPERATOR_CHART, {}, name="fpo", namespace=NAMESPACE)}
    assert not kinds & set(MONITORING_KINDS)
    values = {"monitoring": {"skipCapabilityCheck": True}}
    forced = render(OPERATOR_CHART, values, name="fpo", namespace=NAMESPACE)
    assert set(MONITORING_KINDS) <= {d["kind"] for d in forced}
