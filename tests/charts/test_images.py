"""The Dockerfile and skaffold.yaml refer only to things that exist, and build what they claim.

No Docker engine runs here, so the recipe is checked statically against the workspace:
every COPY source exists and survives .dockerignore, each image's `uv sync --package` names
its workspace member, the entry module is that member's, the final stage runs as a numeric
non-root user, and only model-running images have a GPU variant. tests/sim/test_images.py
builds each image's environment for real and starts its entry point.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartkit import MONITORING_APIS, OPERATOR_CHART, REPO, TENANT_CHART, crd_errors, render, values_sets

from facepipe.sim.images import instructions, load_recipes

IMAGES = {  # skaffold image -> (workspace package, module it runs, has a GPU variant)
    "ghcr.io/face-pipeline/detector": ("facepipe-detector", "facepipe.detector", True),
    "ghcr.io/face-pipeline/embedder": ("facepipe-embedder", "facepipe.embedder", True),
    "ghcr.io/face-pipeline/indexer": ("facepipe-indexer", "facepipe.indexer", False),
    "ghcr.io/face-pipeline/ops-api": ("facepipe-ops-api", "facepipe.ops_api", False),
    "ghcr.io/face-pipeline/operator": ("facepipe-operator", "facepipe.operator", False),
}
DOCKERFILE = REPO / "Dockerfile"
DEV_MEMBERS = {"facepipe-cli", "facepipe-sim"}  # never in an image


def workspace_members() -> dict[str, Path]:
    """Package name -> member folder, from the root pyproject's uv workspace."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = {}
    for folder in root["tool"]["uv"]["workspace"]["members"]:
        project = tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]
        members[project["name"]] = REPO / folder
    return members


def workspace_closure(package: str, members: dict[str, Path]) -> set[str]:
    """The member and every workspace member it depends on, transitively."""
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        deps = tomllib.loads((members[name] / "pyproject.toml").read_text())["project"]["dependencies"]
        todo += [dep for dep in deps if dep in members]
    return seen


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(prefix.split("/")[-1], bare)
            ):
                return True
    return False


def test_one_dockerfile_builds_every_image() -> None:
    assert DOCKERFILE.is_file()
    stray = sorted(str(p.relative_to(REPO)) for p in REPO.glob("*/**/Dockerfile") if ".venv" not in p.parts)
    assert stray == [], "one Dockerfile with build args serves every image"
    assert set(load_recipes(REPO)) == set(IMAGES)


def test_copy_sources_exist_and_reach_the_build_context() -> None:
    patterns = dockerignore_patterns()
    copies = [s.args for s in instructions(DOCKERFILE) if s.op == "COPY" and "--from=" not in s.args]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source} does not exist"
            assert not ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_each_image_installs_its_member_and_runs_its_module(image: str) -> None:
    package, module, _ = IMAGES[image]
    recipe = load_recipes(REPO)[image]
    members = workspace_members()
    assert recipe.package == package and recipe.module == module
    assert [c[-2:] for c in recipe.sync_commands] == [["--package", package]] * 2
    for command in recipe.sync_commands:
        assert {"--frozen", "--no-dev"} <= set(command)
    assert "--no-editable" in recipe.sync_commands[-1]
    # The whole workspace's metadata is copied, or uv cannot read the lock.
    copied = {source for sources, _ in recipe.copies for source in sources}
    for folder in members.values():
        assert f"{folder.relative_to(REPO)}/pyproject.toml" in copied
    # Sources: every runtime member the image may need; development members never.
    for name in workspace_closure(package, members):
        assert f"{members[name].relative_to(REPO)}/src" in copied, f"{image} lacks {name}'s sources"
    for name in DEV_MEMBERS:
        assert f"{members[name].relative_to(REPO)}/src" not in copied
    module_dir = members[package] / "src" / Path(*module.split("."))
    assert (module_dir / "__main__.py").is_file(), f"python -m {module} has no __main__"
    assert recipe.env["FACEPIPE_MODULE"] == module
    assert recipe.entrypoint[:2] == ["/bin/sh", "-c"]
    assert 'python -m "$FACEPIPE_MODULE"' in recipe.entrypoint[2]


def test_final_stage_runs_as_a_numeric_non_root_user() -> None:
    steps = instructions(DOCKERFILE)
    last_from = max(i for i, step in enumerate(steps) if step.op == "FROM")
    users = [step.args for step in steps[last_from:] if step.op == "USER"]
    assert users, "the final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_gpu_variant_only_where_models_run(image: str) -> None:
    package, _, gpu_variant = IMAGES[image]
    # detector and embedder run models on GPUs; ops-api runs them on the CPU (search by photo).
    if gpu_variant:
        assert "facepipe-vision" in workspace_closure(package, workspace_members())
    build_args = load_recipes(REPO)[image].build_args
    assert ("ONNXRUNTIME" in build_args) == gpu_variant
    text = DOCKERFILE.read_text()
    assert "uv pip uninstall --python /app/.venv/bin/python onnxruntime" in text
    assert re.search(r'ONNXRUNTIME_GPU="onnxruntime-gpu\[cuda,cudnn\]==[0-9.]+"', text)


# --------------------------------------------------------------------------- skaffold


def skaffold() -> dict[str, Any]:
    return yaml.safe_load((REPO / "skaffold.yaml").read_text())


def template_var(image: str) -> str:
    """Skaffold's sanitised image name in {{.IMAGE_REPO_<name>}}."""
    return re.sub(r"[^A-Za-z0-9]", "_", image)


def test_skaffold_builds_every_image_from_the_one_dockerfile() -> None:
    config = skaffold()
    assert config["apiVersion"].startswith("skaffold/v4") and config["kind"] == "Config"
    artifacts = config["build"]["artifacts"]
    for artifact in artifacts:
        context = REPO / artifact.get("context", ".")
        assert context.resolve() == REPO, "every image builds from the workspace root"
        assert (context / artifact["docker"]["dockerfile"]).resolve() == DOCKERFILE
    assert {artifact["image"] for artifact in artifacts} == set(IMAGES)


def test_skaffold_deploys_both_charts_with_the_built_images() -> None:
    config = skaffold()
    releases = config["deploy"]["helm"]["releases"]
    assert [r["chartPath"] for r in releases] == ["charts/face-pipeline-operator", "charts/face-pipeline"]
    for release in releases:
        assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    templated = " ".join(str(v) for r in releases for v in r.get("setValueTemplates", {}).values())
    for artifact in config["build"]["artifacts"]:
        var = template_var(artifact["image"])
        assert f"{{{{.IMAGE_REPO_{var}}}}}" in templated and f"{{{{.IMAGE_TAG_{var}}}}}" in templated, var


def skaffold_values(release: dict[str, Any]) -> dict[str, Any]:
    """The values Skaffold would pass (--set), with image templates filled in."""
    values: dict[str, Any] = {}
    for key, value in {**release.get("setValues", {}), **release.get("setValueTemplates", {})}.items():
        if isinstance(value, str) and "{{" in value:
            value = "registry.local/image" if "IMAGE_REPO" in value else "dev-abc123"
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def apply_patches(config: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """JSON-patch add/replace as Skaffold applies a profile; a path that does not resolve fails."""
    out = copy.deepcopy(config)
    for patch in patches:
        *parents, leaf = patch["path"].strip("/").split("/")
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if patch["op"] == "replace":
            assert leaf in node, f"replace of missing {patch['path']}"
        else:
            assert patch["op"] == "add", patch
        node[leaf] = patch["value"]
    return out


@pytest.mark.parametrize("profile", [None, "dev", "gpu"])
def test_skaffold_tenant_values_render_a_valid_facepipeline(profile: str | None) -> None:
    config = skaffold()
    if profile:
        (chosen,) = [p for p in config["profiles"] if p["name"] == profile]
        config = apply_patches(config, chosen.get("patches", []))
    operator_release, tenant_release = config["deploy"]["helm"]["releases"]
    operator_docs = render(  # a cluster with prometheus-operator
        OPERATOR_CHART,
        skaffold_values(operator_release),
        name="fpo",
        namespace="facepipe-system",
        api_versions=MONITORING_APIS,
    )
    (deployment,) = [d for d in operator_docs if d["kind"] == "Deployment"]
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.local/image:dev-abc123"
    )
    assert (profile == "dev") == ("PodMonitor" not in {d["kind"] for d in operator_docs})
    tenant = skaffold_values(tenant_release)
    (pipeline,) = render(TENANT_CHART, tenant, name="demo", namespace="facepipe-demo")
    assert crd_errors(pipeline) == []
    spec = pipeline["spec"]
    assert spec["components"]["detector"]["image"] == {
        "repository": "registry.local/image",
        "tag": "dev-abc123",
    }
    if profile == "dev":
        assert spec["models"]["pack"] == "buffalo_sc" and spec["dedup"]["maxHamming"] == 12
    elif profile == "gpu":
        assert spec["models"]["device"] == "cuda"
        assert config["build"]["artifacts"][0]["docker"]["buildArgs"]["ONNXRUNTIME"] == "gpu"
    else:
        assert spec["models"]["pack"] == "buffalo_sc"


# --------------------------------------------------------------------------- one image story


def _pod_images(pipeline: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(component, image, command) of every container and init container the operator would run."""
    from facepipe.operator.builders import PipelineRef, build_children
    from facepipe.operator.validation import parse_spec

    name = pipeline["metadata"]["name"]
    children = build_children(PipelineRef(name, "ns", "uid"), parse_spec(name, pipeline["spec"]))
    found = []
    for deployment in (c for c in children if c["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        component = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            found.append((component, container["image"], container["command"]))
    return found


def _default_registry_pipelines() -> dict[str, dict[str, Any]]:
    """The shipped examples and chart values that use the default registry (no mirror)."""
    found = {}
    for path in sorted((REPO / "examples").glob("*.yaml")):
        found[path.name] = yaml.safe_load(path.read_text())
    for name, values in values_sets(TENANT_CHART).items():
        if values.get("image", {}).get("registry") not in (None, "ghcr.io/face-pipeline"):
            continue  # a mirror registry, on purpose
        (found[f"chart:{name}"],) = render(TENANT_CHART, values, name="acme", namespace="ns")
    return found


@pytest.mark.parametrize("source", sorted(_default_registry_pipelines()))
def test_every_image_the_operator_runs_is_one_skaffold_builds(source: str) -> None:
    """CRD defaults, examples and chart: ghcr.io/face-pipeline/<component>, the very images built."""
    recipes = load_recipes(REPO)
    members = workspace_members()
    pipeline = _default_registry_pipelines()[source]
    for component, image, command in _pod_images(pipeline):
        repository, _, tag = image.rpartition(":")
        assert repository in recipes, f"{source}: {component} runs {image}, which nothing builds"
        recipe = recipes[repository]
        assert repository == f"ghcr.io/face-pipeline/{component}" and tag
        assert command[:2] == ["python", "-m"]
        module = command[2]
        # The module is in the image: its own member's, or one of the member's dependencies'.
        module_path = Path(*module.split("."))
        owner = next(
            (
                n
                for n, folder in members.items()
                if (folder / "src" / module_path / "__main__.py").is_file()
                or (folder / "src" / module_path.with_suffix(".py")).is_file()
            ),
            None,
        )
        assert owner in workspace_closure(recipe.package, members), f"{image} lacks {module}"
    assert {component for component, _, _ in _pod_images(pipeline)} == {
        "detector",
        "embedder",
        "indexer",
        "ops-api",
    }


def test_the_operator_chart_runs_the_operator_image() -> None:
    docs = render(OPERATOR_CHART, {}, name="fpo", namespace="x")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.rpartition(":")[0] in load_recipes(REPO)
    assert image.rpartition(":")[0] == "ghcr.io/face-pipeline/operator"
