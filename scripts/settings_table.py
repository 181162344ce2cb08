"""Print the Markdown table of every setting (env name, aliases, default, allowed values).

The README's "Settings" section is this script's output; tests/foundation/test_readme_settings.py
checks that every variable the code reads is documented there.
"""

from __future__ import annotations

from pydantic import AliasChoices
from pydantic_core import PydanticUndefined

from facepipe.core.settings import Settings


def rows() -> list[tuple[str, str, str, str, str]]:
    out = []
    for name, info in Settings.model_fields.items():
        choices = info.validation_alias.choices if isinstance(info.validation_alias, AliasChoices) else [name]
        primary, aliases = str(choices[0]), ", ".join(str(c) for c in choices[1:])
        if info.default_factory is not None:
            default = "~/.cache/facepipe/models" if name == "models_dir" else "(computed)"
        elif info.default is PydanticUndefined:
            default = "(required)"
        else:
            default = str(info.default) if info.default != "" else '""'
        limits = []
        for meta in info.metadata:
            for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
                value = getattr(meta, attr, None)
                if value is not None:
                    limits.append(f"{sign} {value}")
        annotation = str(info.annotation)
        if "Literal" in annotation:
            limits.append(annotation.split("Literal", 1)[1].strip("[]").replace("'", ""))
        out.append((primary, aliases, default, ", ".join(limits), info.description or ""))
    return out


def main() -> None:
    print("| variable | legacy alias | default | allowed | what it does |")
    print("|---|---|---|---|---|")
    for primary, aliases, default, limits, description in rows():
        print(f"| `{primary}` | {aliases} | `{default}` | {limits} | {description} |")


if __name__ == "__main__":
    main()
