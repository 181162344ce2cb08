"""Fixtures of the reliability suite (marker ``reliability``; ``make reliability`` runs it at full size).

RELIABILITY_SCALE sizes the heavy scenarios: 1 is the full size (≥ 300 images under
kill -9, 10,000 hostile messages); unset, CI and plain ``pytest`` run 0.15. Each scenario
appends a row to the figures table, printed at the end of the session (and written as
Markdown to RELIABILITY_FIGURES when that is set).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for reliabilitykit, reliability_images

from reliability_images import GeneratedImage, assign_tenants, composite, load_photos, measure
from reliabilitykit import FIGURES, Stack, figures_markdown, scale, scaled

from facepipe.core.settings import load_settings

IMAGE_SEED = 20261128


@pytest.fixture(scope="session")
def image_set(faces_dir: Path, faces_manifest: dict[str, dict], models_dir: Path) -> list[GeneratedImage]:
    """The generated images with their ground-truth faces and tenants (the largest any scenario uses)."""
    count = scaled(330, 70)
    photos = load_photos(faces_dir)
    images = [
        GeneratedImage(name, data, content_type)
        for name, data, content_type in composite(photos, count, seed=IMAGE_SEED)
    ]
    measure(
        images,
        load_settings(
            models_dir=models_dir, model_pack="buffalo_sc", inference_device="cpu", ort_intra_op_threads=1
        ),
    )
    # The untouched photos must show MANIFEST.json's faces (accepted or refused by a quality gate).
    for image in images:
        if image.name.startswith("original:"):
            stem = image.name.split(":", 1)[1]
            photo = next(name for name in faces_manifest if name.rsplit(".", 1)[0] == stem)
            assert len(image.faces) + image.rejected == faces_manifest[photo]["faces"], image.name
    return assign_tenants(images, prefix="rel-t")


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path) -> Iterator[Stack]:
    """A fresh set of servers for one scenario (services are spawned by the test)."""
    stack = Stack(tmp_path, models_dir).start()
    yield stack
    stack.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section(f"reliability figures (RELIABILITY_SCALE={scale():g})")
    terminalreporter.write_line(figures_markdown())
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(figures_markdown() + "\n")
        terminalreporter.write_line(f"written to {target}")
