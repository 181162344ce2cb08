"""The CRD and the operator's spec model agree: same defaults, same limits, same examples."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from operatorkit import CRD_PATH, EXAMPLES, minimal_spec

from facepipe.operator.validation import SpecError, parse_spec


def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD_PATH.read_text())


def version_schema() -> dict[str, Any]:
    (version,) = crd()["spec"]["versions"]
    return version


def spec_schema() -> dict[str, Any]:
    return version_schema()["schema"]["openAPIV3Schema"]["properties"]["spec"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting as the API server does it (defaults of present objects)."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    out = dict(value)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = apply_defaults(sub, out[key])
    return out


def test_crd_is_a_valid_v1_crd_with_status_and_printer_columns() -> None:
    document = crd()
    kubernetes_validate.validate(document, "1.33.0", strict=True)
    assert document["metadata"]["name"] == "facepipelines.facepipe.io"
    assert document["spec"]["scope"] == "Namespaced"
    version = version_schema()
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns == {
        "Tenant": ".spec.tenantId",
        "Phase": ".status.phase",
        "Ingest-Lag": ".status.ingestLag",
        "Ready": ".status.readyComponents",
        "Pack": ".status.models.pack",
        "Age": ".metadata.creationTimestamp",
    }


def test_crd_defaults_are_the_operators_defaults() -> None:
    raw = minimal_spec("redis://redis:6379/0")
    defaulted = apply_defaults(spec_schema(), raw)
    assert defaulted != raw  # the CRD really defaults things (dedup, components, ...)
    assert defaulted["dedup"] == {"enabled": True, "maxHamming": 8, "ttlSeconds": 3600}
    # Whatever the API server fills in, the operator would have assumed the same.
    assert parse_spec("demo", defaulted) == parse_spec("demo", raw)


@pytest.mark.parametrize("name", ["facepipeline.yaml", "facepipeline-full.yaml"])
def test_examples_pass_the_crd_schema_and_the_operator(name: str) -> None:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    assert document["apiVersion"] == "facepipe.io/v1alpha1" and document["kind"] == "FacePipeline"
    jsonschema.Draft7Validator(spec_schema()).validate(document["spec"])
    parse_spec(document["metadata"]["name"], apply_defaults(spec_schema(), document["spec"]))


INVALID = {
    "maxHamming above 64": ({"dedup": {"maxHamming": 65}}, "spec.dedup.maxHamming"),
    "maxHamming below 0": ({"dedup": {"maxHamming": -1}}, "spec.dedup.maxHamming"),
    "ttl 0": ({"dedup": {"ttlSeconds": 0}}, "spec.dedup.ttlSeconds"),
    "unknown device": ({"models": {"device": "tpu"}}, "spec.models.device"),
    "unknown provider": (
        {"components": {"detector": {"autoscaling": {"provider": "vpa"}}}},
        "spec.components.detector.autoscaling.provider",
    ),
    "deletion policy": ({"deletionPolicy": "Delete"}, "spec.deletionPolicy"),
    "qdrant without scheme": ({"vectorDb": {"url": "qdrant:6333"}}, "spec.vectorDb.url"),
    "tenant with colon": ({"tenantId": "a:b"}, "spec.tenantId"),
    "batch size 0": ({"components": {"indexer": {"batchSize": 0}}}, "spec.components.indexer.batchSize"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_schema_and_operator_refuse_the_same_bad_values(case: str) -> None:
    change, field = INVALID[case]
    raw = minimal_spec("redis://redis:6379/0")
    for key, value in change.items():
        raw[key] = (
            {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
        )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(spec_schema()).validate(raw)
    with pytest.raises(SpecError) as caught:
        parse_spec("demo", raw)
    assert any(problem.startswith(field) for problem in caught.value.problems), caught.value.problems


BEYOND_SCHEMA = {
    "unknown setting name": (
        {"settings": {"NOT_A_SETTING": "1"}},
        "spec.settings.NOT_A_SETTING: not a setting",
    ),
    "managed setting": ({"settings": {"DEDUP_MAX_HAMMING": "3"}}, "set by spec.dedup.maxHamming"),
    "legacy alias": ({"settings": {"FACE_STREAM": "x"}}, "use REDIS_STREAM_NAME"),
    "bad setting value": ({"settings": {"DET_SIZE": "5"}}, "DET_SIZE='5' is invalid"),
    "both redis url and secret": (
        {"redis": {"url": "redis://r:6379/0", "urlSecretRef": {"name": "s"}}},
        "exactly one of url and urlSecretRef",
    ),
    "hpa min 0": (
        {"components": {"detector": {"autoscaling": {"enabled": True, "minReplicas": 0}}}},
        "minReplicas 0 needs provider keda",
    ),
    "min above max": (
        {"components": {"embedder": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}},
        "exceeds maxReplicas",
    ),
    "keda with a password url": (
        {
            "redis": {"url": "redis://:pw@r:6379/0"},
            "components": {"indexer": {"autoscaling": {"enabled": True, "provider": "keda"}}},
        },
        "kedaAuthenticationRef",
    ),
    "hpa and keda mixed": (
        {
            "components": {
                "detector": {"autoscaling": {"enabled": True}},
                "indexer": {"autoscaling": {"enabled": True, "provider": "keda"}},
            }
        },
        "spec.components.autoscaling.provider: the workers use both hpa (detector) and keda (indexer)",
    ),
    "one bucket for two roles": (
        {"storage": {"endpoint": "minio:9000", "buckets": {"crops": "shared", "thumbs": "shared"}}},
        "BUCKET_CROPS and BUCKET_THUMBS are both 'shared'",
    ),
    "ops-api cpu scaling without a cpu request": (
        {"components": {"opsApi": {"autoscaling": {"enabled": True}}}},
        "resources.requests.cpu",
    ),
}


@pytest.mark.parametrize("case", list(BEYOND_SCHEMA))
def test_problems_the_schema_cannot_see_give_one_clear_line(case: str) -> None:
    change, expected = BEYOND_SCHEMA[case]
    raw = {**minimal_spec("redis://redis:6379/0"), **change}
    with pytest.raises(SpecError) as caught:
        parse_spec("demo", raw)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


@pytest.mark.parametrize("name", ["Demo", "1demo", "a" * 51, "demo_1"])
def test_names_that_cannot_name_services_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match=r"metadata\.name"):
        parse_spec(name, minimal_spec("redis://redis:6379/0"))


def test_unknown_fields_are_named() -> None:
    with pytest.raises(SpecError, match=r"spec\.dedup\.maxHaming: unknown field"):
        parse_spec("demo", {**minimal_spec("redis://r:6379/0"), "dedup": {"maxHaming": 3}})


def test_the_crd_carries_the_schema_hash_the_operator_expects() -> None:
    """Edit the CRD's schema: this fails until the annotation and CRD_SCHEMA_HASH both say the new hash."""
    from facepipe.operator.constants import ANNOTATION_SCHEMA_HASH, CRD_SCHEMA_HASH
    from facepipe.operator.crd_check import crd_problem, schema_hash

    document = crd()
    actual = schema_hash(document)
    assert document["metadata"]["annotations"][ANNOTATION_SCHEMA_HASH] == actual, f"annotate {actual}"
    assert actual == CRD_SCHEMA_HASH, f"set facepipe.operator.constants.CRD_SCHEMA_HASH = {actual!r}"
    assert crd_problem(document) is None
    older = copy.deepcopy(document)
    spec_properties = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec_properties["properties"]["models"]
    older["metadata"]["annotations"][ANNOTATION_SCHEMA_HASH] = schema_hash(older)
    assert "helm show crds" in (crd_problem(older) or "")
