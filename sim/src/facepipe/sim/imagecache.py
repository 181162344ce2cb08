"""Each image's environment, built where the image keeps it and cached until its inputs change.

The Dockerfile's build stage runs its ``uv sync`` lines in /src with the environment at
/app/.venv; so does this, inside a container (facepipe.sim.launcher) whose /src holds only
what the build stage COPYs and whose /app/.venv is the cache folder. Scripts, shebangs and
recorded paths are therefore those of the image. The cache key hashes every copied file,
the sync lines, the build stage's ENV and the interpreter, so an edit to any source the
image copies rebuilds it; the folder is world-readable, because pods run as other users.

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
KEEP_PER_IMAGE = 3  # older builds of an image are removed (a running pod may still use the newest)


def _uv_binary() -> Path:
    """The real uv executable (not a pyenv shim script, which needs its whole tree)."""
    found = shutil.which("uv")
    if not found:
        raise RecipeError("uv is not installed")
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        # `uv self version` does not name its path; python -m uv's find_uv_bin does.
        out = subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip()).resolve()
    return Path(found).resolve()


def _uv_cache_dir() -> Path:
    out = subprocess.run([str(_uv_binary()), "cache", "dir"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RecipeError(f"uv cache dir: {out.stderr}")
    return Path(out.stdout.strip())


def content_key(recipe: ImageRecipe, context: Path) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            {"sync": recipe.sync_commands, "env": recipe.build_env, "python": python_for_images()},
            sort_keys=True,
        ).encode()
    )
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
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
    """Environments by image, built once per content key; safe across threads and processes."""

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
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{slug}-", dir=self.root))
        try:
            context = stage_build_context(recipe, self.repo, staging / "context")
            key = content_key(recipe, context)
            final = self.root / f"{slug}-{key}"
            with _locked(self.root / f"{slug}.lock"):
                if not (final / "venv" / "pyvenv.cfg").exists():
                    self._build(recipe, staging)
                    shutil.rmtree(final, ignore_errors=True)
                    os.rename(staging, final)
                    self._prune(slug, keep=final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._lock:
            self._known[recipe.image] = final / "venv"
        return final / "venv"

    def _make_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.root, *self.root.parents):
            if folder == Path("/"):
                break
            if folder.stat().st_mode & 0o005 != 0o005:
                raise RecipeError(f"{folder} is not world-readable: pods running as other users need it")

    def _build(self, recipe: ImageRecipe, staging: Path) -> None:
        venv = staging / "venv"
        venv.mkdir(mode=0o755)
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
        for command in recipe.sync_commands:
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

    def _prune(self, slug: str, keep: Path) -> None:
        builds = sorted(
            (p for p in self.root.glob(f"{slug}-*") if p.is_dir() and (p / "venv").exists() and p != keep),
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
