"""Container images as the simulation runs them: one virtualenv per image, built as the Dockerfile builds it.

No container runtime can be had here, so an image is reproduced from its recipe: the
skaffold artifact names the image and its build args, the Dockerfile's build stage
says which files are copied and which ``uv sync`` lines install them, and its final
stage gives the environment, user, working directory and entry point. Building the
environment from exactly those files and those lines means a module or dependency
missing from an image fails here as it would in the cluster.

    recipes = load_recipes(repo)                      # image name -> ImageRecipe
    venv = build_environment(recipes["ghcr.io/face-pipeline/detector"], repo, target)
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from facepipe.cli.programs import ProgramNotFound, find_program

# The environment every base image this Dockerfile may start FROM (Debian-based python:*-slim)
# gives its processes; the image's own ENV lines are layered over it ($PATH expands to this).
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


class RecipeError(Exception):
    """The Dockerfile or skaffold.yaml says something this reproduction cannot honour."""


@dataclass(frozen=True)
class Instruction:
    op: str
    args: str


@dataclass(frozen=True)
class ImageUser:
    """An account the image's final stage creates (``groupadd``/``useradd``): /etc/passwd lines."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str = "/usr/sbin/nologin"
    create_home: bool = False


@dataclass(frozen=True)
class ImageRecipe:
    image: str  # repository without tag, as skaffold names it
    dockerfile: Path
    build_args: dict[str, str]
    copies: list[tuple[list[str], str]]  # build stage COPY sources -> destination
    sync_commands: list[list[str]]  # the build stage's `uv sync` lines, args filled in
    env: dict[str, str] = field(default_factory=dict)  # final stage ENV
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    user: str = ""
    workdir: str = "/"
    build_env: dict[str, str] = field(default_factory=dict)  # build stage ENV (uv's settings)
    build_workdir: str = "/"
    users: tuple[ImageUser, ...] = ()  # accounts the final stage creates (useradd)
    copies_before: tuple[int, ...] = ()  # per sync command: how many COPYs precede it (its layer)

    @property
    def venv_path(self) -> str:
        """Where the image keeps its environment: the build stage's UV_PROJECT_ENVIRONMENT."""
        return self.build_env.get("UV_PROJECT_ENVIRONMENT", "/app/.venv")

    @property
    def package(self) -> str:
        return self.build_args.get("PACKAGE", "")

    @property
    def module(self) -> str:
        return self.build_args.get("MODULE", "")


def instructions(dockerfile: Path) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line = pending + stripped
        pending = ""
        op, _, args = line.partition(" ")
        out.append(Instruction(op.upper(), args.strip()))
    return out


def _substitute(text: str, values: dict[str, str]) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def _stages(steps: list[Instruction]) -> list[list[Instruction]]:
    stages: list[list[Instruction]] = []
    for step in steps:
        if step.op == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(step)
    return stages


def _arg_defaults(steps: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for step in steps:
        if step.op == "ARG":
            name, _, value = step.args.partition("=")
            defaults[name] = value.strip('"') if value else ""
    return defaults


def _env_pairs(args: str) -> dict[str, str]:
    pairs = {}
    for token in shlex.split(args):
        name, sep, value = token.partition("=")
        if not sep:
            raise RecipeError(f"ENV {args!r}: only the NAME=value form is supported")
        pairs[name] = value
    return pairs


def _exec_form(args: str, what: str) -> list[str]:
    value = yaml.safe_load(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise RecipeError(f"{what} {args!r}: only the exec (JSON list) form is supported")
    return value


def _sync_commands(run_args: str, values: dict[str, str]) -> list[list[str]]:
    """Every `uv sync ...` of one RUN line (a RUN may chain commands with && or ;)."""
    commands = []
    for part in re.split(r"&&|;|\|\|", run_args):
        words = shlex.split(_substitute(part, values))
        while words and words[0].startswith("--"):  # RUN's own flags (--mount=...)
            words.pop(0)
        if words[:2] == ["uv", "sync"]:
            commands.append(words)
    return commands


_ACCOUNT_OPTIONS = {
    "-u": "uid",
    "--uid": "uid",
    "-g": "gid",
    "--gid": "gid",
    "-d": "home",
    "--home-dir": "home",
    "-s": "shell",
    "--shell": "shell",
}


def _users(run_args: str) -> list[ImageUser]:
    """The ``useradd`` commands of one RUN line, with their numeric ids (the only ones honoured)."""
    users = []
    for part in re.split(r"&&|;|\|\|", run_args):
        words = shlex.split(part)
        if not words or words[0] != "useradd":
            continue
        options: dict[str, str] = {}
        flags: set[str] = set()
        rest = words[1:]
        while rest:
            word = rest.pop(0)
            if word in _ACCOUNT_OPTIONS and rest:
                options[_ACCOUNT_OPTIONS[word]] = rest.pop(0)
            elif word.startswith("-"):
                flags.add(word)
            else:
                options["name"] = word
        if not (options.get("uid", "").isdigit() and options.get("gid", "").isdigit() and "name" in options):
            raise RecipeError(f"RUN {part.strip()!r}: useradd needs a name, a numeric --uid and --gid")
        users.append(
            ImageUser(
                options["name"],
                int(options["uid"]),
                int(options["gid"]),
                options.get("home", f"/home/{options['name']}"),
                options.get("shell", "/usr/sbin/nologin"),
                create_home=bool(flags & {"-m", "--create-home"}),
            )
        )
    return users


def parse_recipe(image: str, dockerfile: Path, build_args: dict[str, str]) -> ImageRecipe:
    steps = instructions(dockerfile)
    stages = _stages(steps)
    if len(stages) < 2:
        raise RecipeError(f"{dockerfile}: expected a build stage and a final stage")
    global_args = _arg_defaults([s for s in steps[: steps.index(stages[0][0])]])
    build, final = stages[0], stages[-1]
    build_values = {**global_args, **_arg_defaults(build), **build_args}
    copies, syncs = [], []
    copies_before: list[int] = []
    build_env: dict[str, str] = dict(BASE_IMAGE_ENV)
    build_workdir = "/"
    for step in build:
        if step.op == "ENV":
            for name, value in _env_pairs(step.args).items():
                build_env[name] = _substitute(value, {**build_values, **build_env})
        elif step.op == "WORKDIR":
            build_workdir = step.args
        elif step.op == "COPY":
            if "--from=" in step.args:
                continue
            *sources, dest = shlex.split(_substitute(step.args, build_values))
            copies.append((sources, dest))
        elif step.op == "RUN":
            found = _sync_commands(step.args, build_values)
            syncs += found
            copies_before += [len(copies)] * len(found)
    final_values = {**global_args, **_arg_defaults(final), **build_args}
    env: dict[str, str] = dict(BASE_IMAGE_ENV)
    entrypoint: list[str] = []
    cmd: list[str] = []
    user, workdir = "", "/"
    users: list[ImageUser] = []
    for step in final:
        if step.op == "RUN":
            users += _users(step.args)
        elif step.op == "ENV":
            for name, value in _env_pairs(step.args).items():
                env[name] = _substitute(value, {**final_values, **env})
        elif step.op == "ENTRYPOINT":
            entrypoint = _exec_form(step.args, "ENTRYPOINT")
        elif step.op == "CMD":
            cmd = _exec_form(step.args, "CMD")
        elif step.op == "USER":
            user = step.args
        elif step.op == "WORKDIR":
            workdir = step.args
    if not syncs:
        raise RecipeError(f"{dockerfile}: the build stage runs no `uv sync`")
    return ImageRecipe(
        image,
        dockerfile,
        dict(build_args),
        copies,
        syncs,
        env,
        entrypoint,
        cmd,
        user,
        workdir,
        build_env,
        build_workdir,
        tuple(users),
        tuple(copies_before),
    )


def load_recipes(repo: Path) -> dict[str, ImageRecipe]:
    """Every image skaffold.yaml builds, by image name (no tag)."""
    config: dict[str, Any] = yaml.safe_load((repo / "skaffold.yaml").read_text())
    recipes = {}
    for artifact in config["build"]["artifacts"]:
        context = repo / artifact.get("context", ".")
        docker = artifact.get("docker") or {}
        dockerfile = context / docker.get("dockerfile", "Dockerfile")
        args = {k: str(v) for k, v in (docker.get("buildArgs") or {}).items()}
        recipes[artifact["image"]] = parse_recipe(artifact["image"], dockerfile, args)
    return recipes


def stage_build_context(recipe: ImageRecipe, repo: Path, target: Path, copies: int | None = None) -> Path:
    """Copy exactly what the build stage COPYs (and nothing else) into ``target`` (its WORKDIR).

    ``copies``: only the first so many COPY lines (the context as a given layer sees it).

    Docker's rules: a directory source copies its contents; a destination ending in '/'
    (or shared by several sources) is a directory that receives each source by name.
    """
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for sources, dest in recipe.copies[:copies]:
        into_dir = dest.endswith("/") or len(sources) > 1
        for source in sources:
            src = repo / source
            if not src.exists():
                raise RecipeError(f"{recipe.image}: COPY {source}: not in the build context")
            where = target / dest
            if src.is_dir():
                shutil.copytree(src, where, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
                continue
            if into_dir:
                where = where / src.name
            where.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, where)
    return target


@functools.cache
def python_for_images() -> str:
    """The interpreter of every image environment and of the launcher: a python3.11 that other uids
    can run (pods run as the image's user, e.g. 10001), so Debian's and never pyenv's under /root.
    The real file, not a virtualenv's link to it."""
    try:
        return os.path.realpath(find_program("python3.11", for_other_users=True))
    except ProgramNotFound as exc:
        raise RecipeError(str(exc)) from exc


def build_environment(recipe: ImageRecipe, repo: Path, target: Path, *, uv: str | None = None) -> Path:
    """Build the image's virtualenv at ``target/venv`` from its own `uv sync` lines; return its path.

    The sources come from a staging copy holding only what the Dockerfile copies, so a
    workspace member the image does not copy cannot be installed by accident.
    """
    if uv is None:
        try:
            uv = find_program("uv")
        except ProgramNotFound as exc:
            raise RecipeError(str(exc)) from exc
    context = stage_build_context(recipe, repo, target / "context")
    venv = target / "venv"
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON": python_for_images(),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_LINK_MODE": os.environ.get("UV_LINK_MODE", "hardlink"),
        "UV_NO_PROGRESS": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    for command in recipe.sync_commands:
        done = subprocess.run([uv, *command[1:]], cwd=context, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RecipeError(f"{recipe.image}: `{shlex.join(command)}` failed:\n{done.stderr[-4000:]}")
    return venv
