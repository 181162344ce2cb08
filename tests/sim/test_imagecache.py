"""Image environments are cached per `uv sync` layer, as Docker caches layers: what invalidates what."""

from __future__ import annotations

import shutil
from pathlib import Path

from facepipe.sim.imagecache import layer_key, repository
from facepipe.sim.images import ImageRecipe, load_recipes, stage_build_context

REPO = Path(__file__).resolve().parents[2]
DETECTOR = load_recipes(REPO)["ghcr.io/face-pipeline/detector"]


def keys(recipe: ImageRecipe, repo: Path, work: Path) -> list[str]:
    parent, out = "", []
    for layer in range(len(recipe.sync_commands)):
        context = stage_build_context(recipe, repo, work / f"ctx{layer}", copies=recipe.copies_before[layer])
        parent = layer_key(recipe, layer, context, parent)
        out.append(parent)
    return out


def copy_of_build_context(recipe: ImageRecipe, target: Path) -> Path:
    """Only what the Dockerfile copies, at the same paths: a repository as far as the build sees."""
    for sources, _ in recipe.copies:
        for source in sources:
            src, dst = REPO / source, target / source
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
    return target


def test_a_source_edit_rebuilds_only_the_layer_that_installs_the_sources(tmp_path: Path) -> None:
    assert len(DETECTOR.sync_commands) == 2  # dependencies, then the workspace members
    original = keys(DETECTOR, REPO, tmp_path / "a")
    assert keys(DETECTOR, REPO, tmp_path / "b") == original  # deterministic
    repo = copy_of_build_context(DETECTOR, tmp_path / "repo")
    source = repo / "libs" / "core" / "src" / "facepipe" / "core" / "logs.py"
    source.write_text(source.read_text() + "\n# edited\n")
    edited = keys(DETECTOR, repo, tmp_path / "c")
    assert edited[0] == original[0] and edited[1] != original[1]
    lock = repo / "uv.lock"
    lock.write_text(lock.read_text() + "\n")
    relocked = keys(DETECTOR, repo, tmp_path / "d")
    assert relocked[0] != original[0] and relocked[1] != edited[1]


def test_image_references_map_to_their_repository() -> None:
    assert repository("ghcr.io/face-pipeline/detector:0.1.0") == "ghcr.io/face-pipeline/detector"
    assert repository("ghcr.io/face-pipeline/detector@sha256:abc") == "ghcr.io/face-pipeline/detector"
    assert repository("localhost:5000/detector:1") == "localhost:5000/detector"
    assert repository("localhost:5000/detector") == "localhost:5000/detector"
