"""The README and docs/ stay true: every command, link, path, test name and setting they name exists.

The README is a front door (at most 300 lines) and repeats no topic page; docs/settings.md is
generated from the Settings class and must equal what `make docs-settings` writes.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest
from pydantic import AliasChoices

from facepipe.cli.main import build_parser
from facepipe.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README_PATH = ROOT / "README.md"
README = README_PATH.read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
# docs/design.md holds the module contracts that every change edits; it is checked for links and
# make targets like the rest, but its module paths are reconciled by whoever changes an interface.
TOPIC_PAGES = [page for page in DOCS if page.name != "design.md"]
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
FENCE = re.compile(r"^\s*(```|~~~)")
# Top-level folders of the repository: a backticked path starting with one of them must exist.
REPO_DIRS = ("libs", "services", "operator", "sim", "charts", "crds", "dashboards", "tests", "bench",
             "scripts", "examples", "docs")


def pages() -> list[Path]:
    return [README_PATH, *DOCS]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def headings(text: str) -> list[str]:
    return [line.lstrip("#").strip() for line in prose_lines(text) if re.match(r"#{1,6} ", line)]


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower-case, punctuation dropped, spaces to hyphens."""
    kept = "".join(
        ch for ch in heading.lower()
        if ch.isalnum() or ch in " -_" or unicodedata.category(ch).startswith("M")
    )
    return kept.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(path.read_text()):
        anchor = github_anchor(heading)
        out.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return frozenset(out)


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block


def test_readme_is_a_front_door() -> None:
    lines = README.count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move topics to docs/ (limit 300)"


def test_no_readme_heading_is_repeated_in_docs() -> None:
    """Each topic lives once: a README section that is also a docs/ section is a copy to keep in sync."""
    readme = {heading.lower() for heading in headings(README)}
    repeated = [
        f"{rel(page)}: {heading}" for page in DOCS for heading in headings(page.read_text())
        if heading.lower() in readme
    ]
    assert not repeated, f"README headings repeated in docs/: {repeated}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", README))
    missing = [rel(page) for page in DOCS if rel(page) not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def link_targets(page: Path) -> list[str]:
    text = "\n".join(prose_lines(page.read_text()))
    text = re.sub(r"`[^`]*`", "", text)  # inline code is not a link
    return re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("page", pages(), ids=rel)
def test_every_relative_link_resolves_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in link_targets(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{rel(page)} has broken links: {broken}"


def test_every_make_target_named_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", makefile, flags=re.M))
    named = {
        (rel(page), target)
        for page in pages()
        for target in re.findall(r"(?:^|`|\$ |# |= )make ([a-z][a-z0-9-]+)", page.read_text(), flags=re.M)
    }
    assert any(page == "README.md" for page, _ in named), "the README names no make target"
    missing = sorted(f"{page}: make {target}" for page, target in named if target not in targets)
    assert not missing, f"make targets that do not exist: {missing}"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_facepipe_command_in_the_readme_exists() -> None:
    commands = subcommands(build_parser())
    named = re.findall(r"(?:^|[\s`/])facepipe ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", README, flags=re.M)
    assert named, "the README names no facepipe command"
    unknown = []
    for command, second in named:
        if command not in commands:
            unknown.append(command)
            continue
        nested = subcommands(commands[command])
        if nested and second and second not in nested:
            unknown.append(f"{command} {second}")
    assert not unknown, f"facepipe commands in README.md that the CLI does not have: {unknown}"


def modules_run(page: Path) -> set[str]:
    named = re.findall(r"python -m ((?:facepipe|bench)[\w.<>]*)", page.read_text())
    return {module.rstrip(".") for module in named if "<" not in module}  # facepipe.<stage> is a pattern


def runnable(module: str) -> bool:
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{module}.__main__")  # a package runs its __main__
    except ModuleNotFoundError:  # a parent package that does not exist
        return False
    return spec is not None


@pytest.mark.parametrize("page", [README_PATH, *TOPIC_PAGES], ids=rel)
def test_every_module_run_with_python_m_exists(page: Path) -> None:
    missing = sorted(module for module in modules_run(page) if not runnable(module))
    assert not missing, f"{rel(page)} runs modules that do not exist: {missing}"


def is_generated_output(path: str) -> bool:
    """A path git ignores is something a command writes (bench results, .sandbox/), not a source."""
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0


@pytest.mark.parametrize("page", [README_PATH, *TOPIC_PAGES], ids=rel)
def test_every_repository_path_named_exists(page: Path) -> None:
    pattern = rf"`((?:{'|'.join(REPO_DIRS)})/[^`\s]*)`"
    named = {path.rstrip("/.,") for path in re.findall(pattern, page.read_text())}
    concrete = {path for path in named if not re.search(r"[<>{}*…]|\.\.\.", path)}
    missing = sorted(p for p in concrete if not (ROOT / p).exists() and not is_generated_output(p))
    assert not missing, f"{rel(page)} names paths that do not exist: {missing}"


@cache
def suite_test_names() -> frozenset[str]:
    names = set()
    for path in (ROOT / "tests").rglob("*.py"):
        names.update(re.findall(r"^\s*(?:async )?def (test_\w+)", path.read_text(), flags=re.M))
    return frozenset(names)


@pytest.mark.parametrize("page", [README_PATH, *TOPIC_PAGES], ids=rel)
def test_every_test_name_mentioned_exists(page: Path) -> None:
    mentioned = set(re.findall(r"`(test_\w+)`", page.read_text()))
    missing = sorted(mentioned - suite_test_names())
    assert not missing, f"{rel(page)} names tests that do not exist: {missing}"


def test_every_docs_page_named_anywhere_in_the_repository_exists() -> None:
    """Code comments, messages and charts that send a reader to docs/ send them somewhere real."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    missing = []
    for name in files.splitlines():
        path = ROOT / name
        if name.endswith(".lock") or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for page in set(re.findall(r"(?<![\w/.-])docs/[\w./-]*\.md", text)):
            if not (ROOT / page).exists():
                missing.append(f"{name}: {page}")
    assert not missing, f"references to docs pages that do not exist: {sorted(missing)}"


def test_settings_page_is_what_make_docs_settings_writes() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_table.py")],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert SETTINGS_PAGE.read_text() == generated, "docs/settings.md is stale: run `make docs-settings`"


def test_every_setting_and_alias_is_on_the_settings_page() -> None:
    page = SETTINGS_PAGE.read_text()
    names = []
    for info in Settings.model_fields.values():
        assert isinstance(info.validation_alias, AliasChoices)
        names += [str(choice) for choice in info.validation_alias.choices]
    missing = [name for name in names if f"`{name}`" not in page]
    assert not missing, f"settings not in docs/settings.md: {missing}"
