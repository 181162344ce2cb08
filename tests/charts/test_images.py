"""Dockerfiles and skaffold.yaml refer only to things that exist, and build what they claim.

No Docker engine runs here, so the Dockerfiles are checked statically against the workspace:
every COPY source exists and survives .dockerignore, every `uv sync --package` names a
workspace member, the entry module is that member's, the final stage runs as a numeric
non-root user, and the model-running images have a GPU variant.
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
from chartkit import OPERATOR_CHART, REPO, TENANT_CHART, crd_errors, render

SERVICES = {  # Dockerfile -> (workspace package, module it runs, needs a GPU variant)
    "services/detector/Dockerfile": ("facepipe-detector", "facepipe.detector", True),
    "services/embedder/Dockerfile": ("facepipe-embedder", "facepipe.embedder", True),
    "services/indexer/Dockerfile": ("facepipe-indexer", "facepipe.indexer", False),
    "services/ops-api/Dockerfile": ("facepipe-ops-api", "facepipe.ops_api", False),
    "operator/Dockerfile": ("facepipe-operator", "facepipe.operator", False),
}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def workspace_members() -> dict[str, Path]:
    """Package name -> member folder, from the root pyproject's uv workspace."""
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = {}
    for folder in root["tool"]["uv"]["workspace"]["members"]:
        project = tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]
        members[project["name"]] = REPO / folder
    return members


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


def test_every_service_has_a_dockerfile() -> None:
    for dockerfile in SERVICES:
        assert (REPO / dockerfile).is_file(), dockerfile
    found = {
        str(p.relative_to(REPO))
        for p in [*REPO.glob("services/*/Dockerfile"), REPO / "operator" / "Dockerfile"]
    }
    assert found == set(SERVICES), "a new Dockerfile belongs in SERVICES and skaffold.yaml"


@pytest.mark.parametrize("dockerfile", sorted(SERVICES))
def test_copy_sources_exist_and_reach_the_build_context(dockerfile: str) -> None:
    patterns = dockerignore_patterns()
    copies = [args for op, args in instructions(REPO / dockerfile) if op == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = shlex.split(args)
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile}: COPY {source} does not exist"
            assert not ignored(source, patterns), f"{dockerfile}: COPY {source} is excluded by .dockerignore"


@pytest.mark.parametrize("dockerfile", sorted(SERVICES))
def test_dockerfile_installs_its_member_and_runs_its_module(dockerfile: str) -> None:
    package, module, _ = SERVICES[dockerfile]
    steps = instructions(REPO / dockerfile)
    members = workspace_members()
    runs = " ".join(args for op, args in steps if op == "RUN")
    synced = set(re.findall(r"uv sync [^;&]*--package (\S+)", runs))
    assert synced == {package}
    assert "--frozen" in runs and "--no-dev" in runs and "--no-editable" in runs
    # The whole workspace's metadata is copied, or uv cannot read the lock.
    copied = " ".join(args for op, args in steps if op == "COPY")
    for folder in members.values():
        assert f"{folder.relative_to(REPO)}/pyproject.toml" in copied
    # Sources copied: the member's own and those of its workspace dependencies.
    project = tomllib.loads((members[package] / "pyproject.toml").read_text())["project"]
    needed = {package} | {dep for dep in project["dependencies"] if dep in members}
    for name in needed:
        assert f"{members[name].relative_to(REPO)}/src" in copied, f"{dockerfile} lacks {name}'s sources"
    module_dir = members[package] / "src" / Path(*module.split("."))
    assert (module_dir / "__main__.py").is_file(), f"python -m {module} has no __main__"
    entrypoint = [args for op, args in steps if op == "ENTRYPOINT"][-1]
    assert yaml.safe_load(entrypoint) == ["python", "-m", module]


@pytest.mark.parametrize("dockerfile", sorted(SERVICES))
def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    steps = instructions(REPO / dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    users = [args for op, args in steps[last_from:] if op == "USER"]
    assert users, f"{dockerfile}: the final stage has no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0 and (not gid or int(gid) != 0)


@pytest.mark.parametrize("dockerfile", sorted(SERVICES))
def test_gpu_variant_where_models_run(dockerfile: str) -> None:
    _, _, gpu = SERVICES[dockerfile]
    text = (REPO / dockerfile).read_text()
    args = {args.split("=", 1)[0] for op, args in instructions(REPO / dockerfile) if op == "ARG"}
    if gpu:
        assert "ONNXRUNTIME" in args and "ONNXRUNTIME_GPU" in args
        assert "uv pip uninstall --python /app/.venv/bin/python onnxruntime" in text
        assert re.search(r'ONNXRUNTIME_GPU="onnxruntime-gpu\[cuda,cudnn\]==[0-9.]+"', text)
    else:
        assert "ONNXRUNTIME" not in args


# --------------------------------------------------------------------------- skaffold


def skaffold() -> dict[str, Any]:
    return yaml.safe_load((REPO / "skaffold.yaml").read_text())


def template_var(image: str) -> str:
    """Skaffold's sanitised image name in {{.IMAGE_REPO_<name>}}."""
    return re.sub(r"[^A-Za-z0-9]", "_", image)


def test_skaffold_builds_every_dockerfile_that_exists() -> None:
    config = skaffold()
    assert config["apiVersion"].startswith("skaffold/v4") and config["kind"] == "Config"
    artifacts = config["build"]["artifacts"]
    built = set()
    for artifact in artifacts:
        context = REPO / artifact.get("context", ".")
        dockerfile = context / artifact["docker"]["dockerfile"]
        assert context.resolve() == REPO, "every image builds from the workspace root"
        assert dockerfile.is_file(), dockerfile
        built.add(str(dockerfile.relative_to(REPO)))
    assert built == set(SERVICES)


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
    operator_docs = render(
        OPERATOR_CHART, skaffold_values(operator_release), name="fpo", namespace="facepipe-system"
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
        assert spec["models"]["pack"] == "buffalo_l"
