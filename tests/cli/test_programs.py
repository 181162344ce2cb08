"""facepipe.cli.programs: every external program found one way, with a clear error when missing."""

from __future__ import annotations

import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from facepipe.cli import programs
from facepipe.cli.programs import ProgramNotFound, find_program, search_dirs, which_program

ROOT = Path(__file__).resolve().parents[2]
NAME = "facepipe-test-program"  # on no machine: only in this test's folders


def _program(folder: Path, text: str = "exit 0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NAME
    path.write_text(f"#!/bin/sh\n{text}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder every uid can search (pytest's own tmp_path is private, mode 700)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        os.chmod(folder, 0o755)
        yield Path(folder)


def test_the_override_then_the_interpreter_then_checkout_tools_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = search_dirs()
    assert dirs[0] == Path(sys.executable).parent
    assert ROOT / ".venv-tools" / "bin" in dirs
    assert dirs.index(ROOT / ".venv-tools" / "bin") < dirs.index(Path("/usr/bin"))

    first, second, explicit = _program(tmp_path / "a"), _program(tmp_path / "b"), _program(tmp_path / "c")
    monkeypatch.setenv("PATH", f"{first.parent}{os.pathsep}{second.parent}")
    assert find_program(NAME) == str(first)
    monkeypatch.setenv("FACEPIPE_FACEPIPE_TEST_PROGRAM", str(explicit))
    assert find_program(NAME) == str(explicit)
    monkeypatch.setenv("FACEPIPE_FACEPIPE_TEST_PROGRAM", str(tmp_path / "nothing"))
    with pytest.raises(ProgramNotFound, match="is not an executable file"):
        find_program(NAME)


def test_a_missing_program_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setitem(programs.INSTALL_HINTS, NAME, "`apt-get install facepipe-test-program`")
    with pytest.raises(ProgramNotFound, match=r"not found .*: `apt-get install facepipe-test-program`"):
        find_program(NAME)
    assert which_program(NAME) is None
    assert issubclass(ProgramNotFound, FileNotFoundError)  # what callers caught before


def test_an_older_version_is_passed_over_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _program(tmp_path / "old", "echo 'Redis server v=6.2.14 sha=0'")
    new = _program(tmp_path / "new", "echo 'Redis server v=7.2.4 sha=0'")
    monkeypatch.setitem(programs.MIN_VERSIONS, NAME, programs.MIN_VERSIONS["redis-server"])
    monkeypatch.setenv("PATH", f"{old.parent}{os.pathsep}{new.parent}")
    assert find_program(NAME) == str(new)
    monkeypatch.setenv("PATH", str(old.parent))
    with pytest.raises(ProgramNotFound, match=rf"passed over {re.escape(str(old))} is 6\.2, older than 7\.0"):
        find_program(NAME)


def test_the_redis_the_suite_finds_is_7_or_newer() -> None:
    from facepipe.cli.localcluster import redis_cli_binary
    from facepipe.cli.localservers import redis_server_binary

    assert programs._version_problem("redis-server", redis_server_binary()) is None
    assert programs._version_problem("redis-cli", redis_cli_binary()) is None


def test_programs_for_other_users_skip_private_folders(
    tmp_path: Path, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    hidden, shared = _program(private), _program(shared_tmp / "bin")
    monkeypatch.setenv("PATH", f"{hidden.parent}{os.pathsep}{shared.parent}")
    assert find_program(NAME) == str(hidden)
    assert find_program(NAME, for_other_users=True) == str(shared)
    monkeypatch.setenv("PATH", str(hidden.parent))
    with pytest.raises(ProgramNotFound, match="which other users cannot run"):
        find_program(NAME, for_other_users=True)


def test_the_image_interpreter_is_one_every_uid_can_run() -> None:
    from facepipe.sim.images import python_for_images

    python = Path(python_for_images())
    assert programs.usable_by_other_users(python), python
    assert python == python.resolve()  # the interpreter itself, not a virtualenv's link to it


def test_the_workspace_uv_is_the_release_the_dockerfile_installs() -> None:
    """The simulation builds image environments with the workspace's uv: the Dockerfile's own."""
    dockerfile = re.search(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile is not None
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]["dev"]
    assert f"uv=={dockerfile[1]}" in dev
