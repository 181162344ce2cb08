"""Every component of an installed pipeline resolves the same value for every setting they share.

For each FacePipeline example and each tenant chart values set, rendered by the real Helm
engine: the operator's builders make the pods; each container's environment is resolved
as the kubelet would (image ENV, ConfigMap keys, literals, the downward API; Secrets
stubbed) and read by the services' own ``Settings``. Every field that more than one
component's code reads must come out equal, except the few that are per component by
design (facepipe.operator.envmap.PER_COMPONENT: batch sizes, threads, consumer names).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from chartkit import REPO, TENANT_CHART, render, values_sets
from kubekit import component_reads, env_name, resolve_env

from facepipe.core.settings import Settings
from facepipe.operator.builders import PipelineRef, build_children
from facepipe.operator.constants import COMPONENTS
from facepipe.operator.envmap import PER_COMPONENT
from facepipe.operator.validation import parse_spec
from facepipe.sim.images import load_recipes

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
RECIPES = load_recipes(REPO)


def _pipelines() -> dict[str, dict[str, Any]]:
    found = {f"examples/{path.name}": yaml.safe_load(path.read_text()) for path in EXAMPLES}
    for name, values in values_sets(TENANT_CHART).items():
        (pipeline,) = render(TENANT_CHART, values, name="acme", namespace="tenants")
        found[f"charts/face-pipeline/ci/{name}-values.yaml"] = pipeline
    return found


PIPELINES = _pipelines()


def component_settings(pipeline: dict[str, Any]) -> dict[str, Settings]:
    name = pipeline["metadata"]["name"]
    children = build_children(PipelineRef(name, "tenants", "uid-1"), parse_spec(name, pipeline["spec"]))
    config_maps = {c["metadata"]["name"]: c["data"] for c in children if c["kind"] == "ConfigMap"}
    resolved = {}
    for deployment in (c for c in children if c["kind"] == "Deployment"):
        component = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        image_defaults = RECIPES[f"ghcr.io/face-pipeline/{component}"].env
        env = {**image_defaults, **resolve_env(container, config_maps)}
        resolved[component] = Settings.model_validate(env)
    assert sorted(resolved) == sorted(COMPONENTS)
    return resolved


def shared_fields() -> list[str]:
    """Settings fields read by the code of more than one component, and not per component by design."""
    fields = []
    for field in Settings.model_fields:
        readers = [c for c in COMPONENTS if env_name(field) in component_reads(c)]
        if len(readers) > 1 and env_name(field) not in PER_COMPONENT:
            fields.append(field)
    return fields


def test_the_comparison_covers_the_settings_that_matter() -> None:
    fields = set(shared_fields())
    assert {"model_pack", "redis_stream_name", "redis_group_name", "redis_url", "bucket_crops"} <= fields
    assert "worker_batch_size" not in fields


@pytest.mark.parametrize("source", sorted(PIPELINES))
def test_components_agree_on_every_shared_setting(source: str) -> None:
    settings = component_settings(PIPELINES[source])
    for field in shared_fields():
        readers = [c for c in COMPONENTS if env_name(field) in component_reads(c)]
        values = {c: getattr(settings[c], field) for c in readers}
        assert len(set(map(str, values.values()))) == 1, f"{source}: {env_name(field)} differs: {values}"


@pytest.mark.parametrize("source", sorted(PIPELINES))
def test_the_settings_are_the_specs(source: str) -> None:
    """Agreement on the spec's values, not on some default: the pack and the streams are the spec's."""
    pipeline = PIPELINES[source]
    settings = component_settings(pipeline)
    pack = pipeline["spec"].get("models", {}).get("pack")
    for component in COMPONENTS:
        if pack:
            assert settings[component].model_pack == pack
        assert settings[component].redis_group_name == pipeline["spec"]["redis"].get("groupName", "pipeline")


def test_a_component_override_of_a_shared_setting_is_refused() -> None:
    """The one way a shared setting could differ: spec.components.<c>.settings. The operator refuses it."""
    from facepipe.operator.validation import SpecError

    spec = dict(PIPELINES["examples/facepipeline.yaml"]["spec"])
    spec["components"] = {"detector": {"settings": {"MIN_FACE_SIZE": "32"}}}
    with pytest.raises(SpecError, match=r"detector, ops-api read it and must agree on it"):
        parse_spec("demo", spec)
    spec["components"] = {"indexer": {"settings": {"DET_SIZE": "512"}}}
    with pytest.raises(SpecError, match="the indexer does not read it"):
        parse_spec("demo", spec)
