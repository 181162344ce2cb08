"""charts/face-pipeline: one FacePipeline per tenant, refused by the chart when the CRD would refuse it."""

from __future__ import annotations

import copy
import importlib.util
import sys
from types import ModuleType
from typing import Any

import helm_python as helm
import pytest
from chartkit import (
    REPO,
    TENANT_CHART,
    crd_errors,
    lint_problems,
    render,
    validate_builtin,
    values_sets,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facepipe.operator import builders
from facepipe.operator.constants import COMPONENTS
from facepipe.operator.validation import SpecError, parse_spec

VALUES = values_sets(TENANT_CHART)
MINIMAL = VALUES["minimal"]


def _load_schema_tool() -> ModuleType:
    """charts/tools/tenant_values_schema.py (a script, not a package): the one list of spec keys."""
    path = REPO / "charts" / "tools" / "tenant_values_schema.py"
    spec = importlib.util.spec_from_file_location("tenant_values_schema", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SCHEMA_TOOL = _load_schema_tool()
# FacePipeline.spec keys the chart copies from values as they are (the image is built).
SPEC_KEYS = SCHEMA_TOOL.SPEC_KEYS
RENDER_ERRORS = (helm.HelmValuesError, helm.HelmRenderError)


def render_pipeline(values: dict[str, Any], release: str = "acme") -> dict[str, Any]:
    docs = render(TENANT_CHART, values, name=release, namespace="tenants")
    assert [d["kind"] for d in docs] == ["FacePipeline"]
    return docs[0]


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def crd_refuses(values: dict[str, Any]) -> list[str]:
    """Why the API server (OpenAPI schema) or its CEL rules, as the operator checks them, refuse it."""
    spec = {key: values[key] for key in SPEC_KEYS if key in values}
    document = {
        "apiVersion": "facepipe.io/v1alpha1",
        "kind": "FacePipeline",
        "metadata": {"name": "acme"},
        "spec": spec,
    }
    problems = crd_errors(document)
    if not problems:
        try:
            parse_spec("acme", spec)
        except SpecError as exc:
            problems = list(exc.problems)
    return problems


def test_values_sets_exist() -> None:
    assert {"minimal", "full", "keda"} <= VALUES.keys()


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_lint_strict_is_clean(values_name: str) -> None:
    assert lint_problems(TENANT_CHART, VALUES[values_name]) == []


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_rendered_facepipeline_is_valid_under_the_crd_schema(values_name: str) -> None:
    release = "globex" if values_name == "full" else "acme"
    pipeline = render_pipeline(VALUES[values_name], release=release)
    assert crd_errors(pipeline) == []
    assert pipeline["apiVersion"] == "facepipe.io/v1alpha1"
    assert pipeline["metadata"]["namespace"] == "tenants"
    assert pipeline["metadata"]["labels"]["facepipe.io/tenant"] == VALUES[values_name]["tenantId"]


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_operator_accepts_it_and_builds_valid_children(values_name: str) -> None:
    """The real operator's builders turn the rendered FacePipeline into valid Kubernetes 1.33 objects."""
    pipeline = render_pipeline(VALUES[values_name])
    spec = parse_spec(pipeline["metadata"]["name"], pipeline["spec"])
    owner = builders.PipelineRef(name=pipeline["metadata"]["name"], namespace="tenants", uid="uid-1")
    children = builders.build_children(owner, spec)
    kinds = [child["kind"] for child in children]
    assert kinds.count("Deployment") == 4
    for child in children:
        if child["apiVersion"].startswith("keda.sh"):
            continue
        validate_builtin(child)
    if values_name == "keda":
        assert "ScaledObject" in kinds and "HorizontalPodAutoscaler" not in kinds


def test_crd_validation_would_catch_a_bad_pipeline() -> None:
    pipeline = render_pipeline(MINIMAL)
    pipeline["spec"]["dedup"]["maxHamming"] = 65
    assert any("maxHamming" in problem for problem in crd_errors(pipeline))


def operator_images(pipeline: dict[str, Any]) -> dict[str, str]:
    """component -> the image the operator runs it with (the chart leaves the derivation to it)."""
    spec = parse_spec(pipeline["metadata"]["name"], pipeline["spec"])
    return {component: builders.component_image(spec, component) for component in COMPONENTS}


def test_production_defaults() -> None:
    pipeline = render_pipeline(MINIMAL)
    spec = pipeline["spec"]
    assert spec["models"]["pack"] == "buffalo_sc"  # fetched by the pods themselves
    assert spec["models"]["device"] == "cpu"
    assert spec["dedup"] == {"enabled": True, "maxHamming": 8, "ttlSeconds": 3600}
    assert spec["deletionPolicy"] == "Retain"
    assert "restartAt" not in spec
    assert "streamName" not in spec["redis"]  # the operator derives the tenant's own stream
    assert all("image" not in component for component in spec["components"].values())
    assert operator_images(pipeline) == {
        "detector": "ghcr.io/face-pipeline/detector:0.1.0",
        "embedder": "ghcr.io/face-pipeline/embedder:0.1.0",
        "indexer": "ghcr.io/face-pipeline/indexer:0.1.0",
        "ops-api": "ghcr.io/face-pipeline/ops-api:0.1.0",
    }


def test_full_values_reach_the_spec() -> None:
    values = VALUES["full"]
    pipeline = render_pipeline(values, release="whatever")
    spec = pipeline["spec"]
    assert pipeline["metadata"]["name"] == "globex"
    assert pipeline["metadata"]["labels"]["team"] == "search"
    assert pipeline["metadata"]["annotations"] == {"owner": "search-team@example.com"}
    assert spec["tenantId"] == "Globex.eu-1"
    assert spec["redis"]["urlSecretRef"] == {"name": "globex-redis", "key": "url"}
    assert "url" not in spec["redis"]
    assert spec["dedup"]["ttlSeconds"] == 31536000  # not 3.1536e+07
    assert spec["storage"]["secretRef"]["name"] == "globex-s3"
    assert spec["vectorDb"]["apiKeySecretRef"] == {"name": "globex-qdrant"}
    assert spec["models"]["volume"]["claimName"] == "face-models"
    assert spec["restartAt"] == "2026-11-28T10:00:00Z"
    assert spec["image"] == {
        "repository": "registry.example.com/face-pipeline",
        "tag": "1.4.2",
        "gpuTagSuffix": "-gpu",
        "pullPolicy": "Always",
        "pullSecrets": ["registry-example"],
    }
    assert spec["settings"]["CLAIM_IDLE_MS"] == "120000"
    components = spec["components"]
    # cuda: the detector gets the -gpu image; the embedder keeps its explicit override.
    assert operator_images(pipeline) == {
        "detector": "registry.example.com/face-pipeline/detector:1.4.2-gpu",
        "embedder": "registry.example.com/face-pipeline/embedder-trt:1.4.2-trt",
        "indexer": "registry.example.com/face-pipeline/indexer:1.4.2",
        "ops-api": "registry.example.com/face-pipeline/ops-api:1.4.2",
    }
    assert components["detector"]["autoscaling"] == {
        "enabled": True,
        "provider": "hpa",
        "minReplicas": 2,
        "maxReplicas": 20,
        "targetLagPerReplica": 50,
    }
    assert components["indexer"]["replicas"] == 3
    assert components["opsApi"]["tokenSecretRef"] == {"name": "globex-ops-api"}


INVALID: list[tuple[str, dict[str, Any] | None, str]] = [
    # (case id, values override on minimal (None: see remove), text expected in the chart's error)
    ("maxHamming 99", {"dedup": {"maxHamming": 99}}, "maxHamming"),
    ("maxHamming -1", {"dedup": {"maxHamming": -1}}, "maxHamming"),
    ("ttlSeconds 0", {"dedup": {"ttlSeconds": 0}}, "ttlSeconds"),
    ("tenant with ..", {"tenantId": "acme..eu"}, "tenantId"),
    ("tenant starting with -", {"tenantId": "-acme"}, "tenantId"),
    ("tenant with /", {"tenantId": "acme/eu"}, "tenantId"),
    ("tenant too long", {"tenantId": "a" * 64}, "tenantId"),
    ("redis url and secret", {"redis": {"urlSecretRef": {"name": "r"}}}, "redis"),
    ("redis url not redis", {"redis": {"url": "http://redis:6379"}}, "url"),
    ("unknown model pack", {"models": {"pack": "buffalo_xl"}}, "pack"),
    ("unknown device", {"models": {"device": "tpu"}}, "device"),
    ("batch size 0", {"components": {"detector": {"batchSize": 0}}}, "batchSize"),
    ("concurrency 257", {"components": {"indexer": {"concurrency": 257}}}, "concurrency"),
    ("unknown provider", {"components": {"embedder": {"autoscaling": {"provider": "vpa"}}}}, "provider"),
    (
        "hpa to zero",
        {"components": {"detector": {"autoscaling": {"enabled": True, "minReplicas": 0}}}},
        "minReplicas",
    ),
    (
        "min over max",
        {"components": {"indexer": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}},
        "must not exceed",
    ),
    (
        "ops-api min over max",
        {"components": {"opsApi": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}}},
        "must not exceed",
    ),
    ("unknown deletion policy", {"deletionPolicy": "Delete"}, "deletionPolicy"),
    ("bucket name too short", {"storage": {"buckets": {"raw": "ab"}}}, "raw"),
    ("qdrant url without scheme", {"vectorDb": {"url": "qdrant:6333"}}, "url"),
    ("ops-api port 70000", {"components": {"opsApi": {"port": 70000}}}, "port"),
    ("log level TRACE", {"logLevel": "TRACE"}, "logLevel"),
    (
        "keda with secret url and no auth",
        {
            "redis": {"url": None, "urlSecretRef": {"name": "r"}},
            "components": {"detector": {"autoscaling": {"enabled": True, "provider": "keda"}}},
        },
        "kedaAuthenticationRef",
    ),
    (
        "keda with a password in the url",
        {
            "redis": {"url": "redis://:secret@redis:6379/0"},
            "components": {"detector": {"autoscaling": {"enabled": True, "provider": "keda"}}},
        },
        "kedaAuthenticationRef",
    ),
    (
        "hpa and keda mixed",
        {
            "components": {
                "detector": {"autoscaling": {"enabled": True}},
                "indexer": {"autoscaling": {"enabled": True, "provider": "keda"}},
            }
        },
        "the workers use both hpa .detector. and keda .indexer.",
    ),
]
MISSING: list[tuple[str, tuple[str, ...], str]] = [
    ("missing tenant", ("tenantId",), "tenantId"),
    ("missing redis url", ("redis", "url"), "redis"),
    ("missing storage endpoint", ("storage", "endpoint"), "endpoint"),
    ("missing qdrant url", ("vectorDb", "url"), "url"),
]


def without(values: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = copy.deepcopy(values)
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def drop_nones(values: Any) -> Any:
    if isinstance(values, dict):
        return {k: drop_nones(v) for k, v in values.items() if v is not None}
    return values


@pytest.mark.parametrize(("case", "override", "message"), INVALID, ids=[c[0] for c in INVALID])
def test_chart_refuses_what_the_crd_refuses(case: str, override: dict[str, Any], message: str) -> None:
    values = drop_nones(merged(MINIMAL, override))
    assert crd_refuses(values), f"{case}: the CRD/operator would accept it, so the chart must too"
    with pytest.raises(RENDER_ERRORS, match=message):
        render_pipeline(values)


@pytest.mark.parametrize(("case", "path", "message"), MISSING, ids=[c[0] for c in MISSING])
def test_chart_refuses_missing_required_values(case: str, path: tuple[str, ...], message: str) -> None:
    values = without(MINIMAL, path)
    assert crd_refuses(values), case
    with pytest.raises(RENDER_ERRORS, match=message):
        render_pipeline(values)


def test_chart_refuses_unknown_keys_the_api_server_would_silently_prune() -> None:
    with pytest.raises(helm.HelmValuesError, match="maxHammming"):
        render_pipeline(merged(MINIMAL, {"dedup": {"maxHammming": 4}}))


def test_release_name_must_make_a_valid_facepipeline_name() -> None:
    with pytest.raises(helm.HelmRenderError, match="DNS-1035"):
        render_pipeline(MINIMAL, release="1acme")
    assert (
        render_pipeline(merged(MINIMAL, {"nameOverride": "acme-eu"}), release="1acme")["metadata"]["name"]
        == "acme-eu"
    )


def test_values_schema_is_generated_from_the_crd() -> None:
    module = SCHEMA_TOOL
    assert (TENANT_CHART / "values.schema.json").read_text() == module.render(), (
        "stale schema: run .venv/bin/python charts/tools/tenant_values_schema.py"
    )
    # A CEL rule the generator does not know stops it rather than being dropped.
    with pytest.raises(SystemExit, match="not translated"):
        module.translate({"type": "object", "x-kubernetes-validations": [{"rule": "self.x > 1"}]})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_hamming=st.integers(-3, 68),
    ttl=st.integers(-1, 31_536_002),
    batch=st.integers(-1, 1001),
    enabled=st.booleans(),
    provider=st.sampled_from(["hpa", "keda"]),
    min_replicas=st.integers(-1, 4),
    max_replicas=st.integers(0, 4),
    component=st.sampled_from(["detector", "embedder", "indexer"]),
)
def test_chart_and_crd_agree(
    max_hamming: int,
    ttl: int,
    batch: int,
    enabled: bool,
    provider: str,
    min_replicas: int,
    max_replicas: int,
    component: str,
) -> None:
    """Over many values, the chart accepts exactly what the CRD (with its CEL rules) accepts."""
    values = merged(
        MINIMAL,
        {
            "dedup": {"maxHamming": max_hamming, "ttlSeconds": ttl},
            "components": {
                component: {
                    "batchSize": batch,
                    "autoscaling": {
                        "enabled": enabled,
                        "provider": provider,
                        "minReplicas": min_replicas,
                        "maxReplicas": max_replicas,
                    },
                }
            },
        },
    )
    refused = crd_refuses(values)
    try:
        pipeline = render_pipeline(values)
    except RENDER_ERRORS as exc:
        assert refused, f"chart refused what the CRD accepts: {exc}"
        return
    assert not refused, f"chart accepted what the CRD refuses: {refused}"
    assert crd_errors(pipeline) == []
