"""The README stays true: every setting documented, every `make` target it names exists."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices

from facepipe.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```", 2)[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_setting_and_alias_is_documented() -> None:
    names = []
    for info in Settings.model_fields.values():
        assert isinstance(info.validation_alias, AliasChoices)
        names += [str(choice) for choice in info.validation_alias.choices]
    missing = [name for name in names if f"`{name}`" not in README and f" {name} " not in README
               and f" {name}\n" not in README and f"{name} |" not in README]
    assert not missing, f"settings not in README.md: {missing}"


def test_every_make_target_named_in_the_readme_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", makefile, flags=re.M))
    named = set(re.findall(r"(?:^|`|\$ )make ([a-z][a-z0-9-]+)", README, flags=re.M))
    assert named, "the README names no make target"
    assert named <= targets, f"README names make targets that do not exist: {sorted(named - targets)}"
