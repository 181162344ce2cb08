"""The CRD's bounds and rules, tried against the real API server: every bad value is refused
at the door with a message that names the field (the schema is what users meet first)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest
from operatorkit import facepipeline, minimal_spec
from test_crd_and_spec import INVALID, apply_defaults, spec_schema

from facepipe.operator.kube import FACE_PIPELINE, KubeApiError

# The x-kubernetes-validations rules (CEL): only the API server evaluates them.
RULES = {
    "tenant with '..'": ({"tenantId": "a..b"}, "tenantId must not contain '..'"),
    "both redis url and secret": (
        {"redis": {"url": "redis://r:6379/0", "urlSecretRef": {"name": "s", "key": "url"}}},
        "give exactly one of redis.url and redis.urlSecretRef",
    ),
    "buffalo_l without a claim": ({"models": {"pack": "buffalo_l"}}, "models.pack buffalo_l needs"),
    "min above max": (
        {"components": {"detector": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}}},
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
    ),
}


def _spec_with(change: dict[str, Any]) -> dict[str, Any]:
    raw = minimal_spec("redis://redis:6379/0")
    for key, value in change.items():
        raw[key] = (
            {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
        )
    return raw


def _refusal(real_kube: Any, namespace: str, spec: dict[str, Any]) -> KubeApiError:
    with pytest.raises(KubeApiError) as refused:
        real_kube.create(facepipeline(f"bad-{uuid.uuid4().hex[:6]}", namespace, spec))
    return refused.value


@pytest.mark.parametrize("case", list(INVALID))
def test_schema_bounds_are_refused_by_the_api_server(case: str, real_kube: Any, real_namespace: str) -> None:
    change, field = INVALID[case]
    refused = _refusal(real_kube, real_namespace, _spec_with(change))
    assert refused.status == 422, refused
    assert field in refused.message, refused.message


@pytest.mark.parametrize("case", list(RULES))
def test_validation_rules_are_refused_with_their_message(
    case: str, real_kube: Any, real_namespace: str
) -> None:
    change, message = RULES[case]
    refused = _refusal(real_kube, real_namespace, _spec_with(change))
    assert refused.status == 422, refused
    assert message in refused.message, refused.message


def test_the_tenant_cannot_change_and_defaults_are_the_operators(real_kube: Any, real_namespace: str) -> None:
    spec = minimal_spec("redis://redis:6379/0")
    created = real_kube.create(facepipeline("keep", real_namespace, spec))
    # The API server's defaulting is the schema's, which the operator's own defaults equal
    # (test_crd_and_spec): the stored spec is what the operator assumes.
    assert created["spec"] == apply_defaults(spec_schema(), copy.deepcopy(spec))
    with pytest.raises(KubeApiError) as refused:
        real_kube.patch(FACE_PIPELINE, real_namespace, "keep", {"spec": {"tenantId": "someone-else"}})
    assert refused.value.status == 422 and "tenantId" in refused.value.message, refused.value
