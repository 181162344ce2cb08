"""Each image's environment, built where the image keeps it and cached until its inputs change.

The Dockerfile's build stage runs its ``uv sync`` lines in /src with the environment at
/app/.venv; so does this, inside a container (facepipe.sim.launcher) whose /src holds only
what the build stage has COPYed by then and whose /app/.venv is the cache folder. Scripts,
shebangs and recorded paths are therefore those of the image. Each sync line is a cached
layer keyed by the layer below, the line, the build stage's ENV, the interpreter and every
file copied so far: an edit to a source rebuilds only the layer that installs the sources.
The cache is world-readable, because pods run as other users.

    cache = ImageCache(repo)
    venv = cache.environment(recipes["ghcr.io/face-pipeline/detector"])   # host path to bind
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from facepipe.cli.programs import ProgramNotFound, find_program
from facepipe.sim import rootfs
from facepipe.sim.images import ImageRecipe, RecipeError, python_for_images, stage_build_context

DEFAULT_ROOT = Path(os.environ.get("FACEPIPE_SIM_IMAGES", "/var/tmp/facepipe-sim/images"))
# How the build host reaches the package index (docker build passes these as well).
BUILD_HOST_SETTINGS = {
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_INDEX",
    "UV_NATIVE_TLS",
}
KEEP_PER_IMAGE = 2  # builds kept per image layer (a pod still running may use the previous one)


def _uv_binary() -> Path:
    """The real uv executable (bound into the build container; facepipe.cli.programs finds it)."""
    try:
        return Path(find_program("uv")).resolve()
    except ProgramNotFound as exc:
        raise RecipeError(str(exc)) from exc


def _uv_cache_dir() -> Path:
    out = subprocess.run([str(_uv_binary()), "cache", "dir"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RecipeError(f"uv cache dir: {out.stderr}")
    return Path(out.stdout.strip())


def _hash_context(digest: Any, context: Path) -> None:
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())


def layer_key(recipe: ImageRecipe, layer: int, context: Path, parent: str) -> str:
    """One ``uv sync`` layer: its parent layer, its command, the build ENV, the interpreter, its context."""
    digest = hashlib.sha256(parent.encode())
    digest.update(
        json.dumps(
            {"sync": recipe.sync_commands[layer], "env": recipe.build_env, "python": python_for_images()},
            sort_keys=True,
        ).encode()
    )
    _hash_context(digest, context)
    return digest.hexdigest()[:16]


def _slug(image: str) -> str:
    return image.rsplit("/", 1)[-1].replace(":", "-")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class ImageCache:
    """Environments by image, built once per content key; safe across threads and processes.

    As Docker caches layers, each ``uv sync`` line is a layer keyed by everything before it:
    an edit to a source file re-runs only the sync after the sources' COPY, on a hard-linked
    copy of the cached dependency layer (uv replaces files, never edits them in place).
    """

    def __init__(self, repo: Path, root: Path = DEFAULT_ROOT) -> None:
        self.repo = repo
        self.root = root
        self._lock = threading.Lock()
        self._known: dict[str, Path] = {}

    def environment(self, recipe: ImageRecipe) -> Path:
        """The host folder holding ``recipe``'s environment (built now if its inputs changed)."""
        with self._lock:
            if recipe.image in self._known:
                return self._known[recipe.image]
        self._make_root()
        slug = _slug(recipe.image)
        parent_key, parent_venv = "", None
        for layer in range(len(recipe.sync_commands)):
            staging = Path(tempfile.mkdtemp(prefix=f".staging-{slug}-", dir=self.root))
            try:
                context = stage_build_context(
                    recipe, self.repo, staging / "context", copies=recipe.copies_before[layer]
                )
                key = layer_key(recipe, layer, context, parent_key)
                final = self.root / f"{slug}-{layer}-{key}"
                with _locked(self.root / f"{slug}.lock"):
                    if not (final / "venv" / "pyvenv.cfg").exists():
                        self._build(recipe, layer, staging, parent_venv)
                        shutil.rmtree(final, ignore_errors=True)
                        os.rename(staging, final)
                        self._prune(f"{slug}-{layer}-", keep=final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            parent_key, parent_venv = key, final / "venv"
        assert parent_venv is not None
        with self._lock:
            self._known[recipe.image] = parent_venv
        return parent_venv

    def _make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, *self.root.parents):
            if folder == Path("/"):
                break
            if folder.stat().st_mode & 0o005 != 0o005:
                raise RecipeError(f"{folder} is not world-readable: pods running as other users need it")

    def _build(self, recipe: ImageRecipe, layer: int, staging: Path, parent: Path | None) -> None:
        venv = staging / "venv"
        if parent is None:
            venv.mkdir(mode=0o755)
        else:  # the layer below, hard-linked: instant, and no space taken
            done = subprocess.run(["cp", "-al", str(parent), str(venv)], capture_output=True, text=True)
            if done.returncode != 0:
                raise RecipeError(f"copying the layer below {recipe.image}: {done.stderr}")
        (staging / "container" / "root").mkdir(parents=True)
        log = staging / "build.log"
        mounts = [
            *rootfs.base_system(),
            {"kind": "bind", "source": str(staging / "context"), "target": recipe.build_workdir},
            {"kind": "bind", "source": str(venv), "target": recipe.venv_path},
            {"kind": "bind", "source": str(_uv_binary()), "target": "/usr/local/bin/uv", "readonly": True},
            {"kind": "bind", "source": str(_uv_cache_dir()), "target": "/var/cache/uv"},
        ]
        env = {
            **{k: v for k, v in os.environ.items() if k in BUILD_HOST_SETTINGS},
            **recipe.build_env,
            "UV_PYTHON": python_for_images(),
            "UV_CACHE_DIR": "/var/cache/uv",
            "UV_NO_PROGRESS": "1",
            "HOME": "/root",
        }
        command = recipe.sync_commands[layer]
        plan = {
            "rootfs": str(staging / "container" / "root"),
            "mounts": rootfs.ordered(mounts),
            "workdir": recipe.build_workdir,
            "uid": 0,
            "gid": 0,
            "groups": [],
            "env": env,
            "argv": ["uv", *command[1:]],
        }
        plan_file = staging / "container" / "plan.json"
        plan_file.write_text(json.dumps(plan))
        with open(log, "ab") as out:
            done = subprocess.run(
                [python_for_images(), "-I", str(rootfs.LAUNCHER), "container", str(plan_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-4000:]
            what = f"{recipe.image}: `{shlex.join(command)}` failed ({done.returncode})"
            raise RecipeError(f"{what}:\n{tail}")
        shutil.rmtree(staging / "container")
        os.chmod(staging, 0o755)

    def _prune(self, prefix: str, keep: Path) -> None:
        builds = sorted(
            (p for p in self.root.glob(f"{prefix}*") if p.is_dir() and p != keep),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in builds[KEEP_PER_IMAGE - 1 :]:
            shutil.rmtree(old, ignore_errors=True)


class ImageMissing(Exception):
    """No recipe builds this image: the kubelet reports ErrImagePull / ImagePullBackOff."""


def repository(image: str) -> str:
    """``registry/name:tag@sha256:...`` -> ``registry/name`` (every tag is the working tree's build)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name[: name.rfind(":")]
    return name


class ImageResolver:
    """Image reference -> (recipe, environment), building the environment on first use."""

    def __init__(self, recipes: dict[str, ImageRecipe], cache: ImageCache) -> None:
        self.recipes = recipes
        self.cache = cache

    def recipe(self, image: str) -> ImageRecipe:
        recipe = self.recipes.get(repository(image))
        if recipe is None:
            known = ", ".join(sorted(self.recipes))
            raise ImageMissing(
                f'Failed to pull image "{image}": no skaffold artifact builds {repository(image)} '
                f"(the cluster simulation has: {known})"
            )
        return recipe

    def environment(self, image: str) -> Path:
        return self.cache.environment(self.recipe(image))
