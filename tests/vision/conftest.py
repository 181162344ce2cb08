"""Fixtures of the vision tests: the second model pack (the test photos are in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def yunet_sface(load_model_pack):
    return load_model_pack("opencv_yunet_sface")
