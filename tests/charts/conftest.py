"""Fixtures of the chart tests; chartkit (beside this file) holds the helpers."""

from __future__ import annotations

import sys
from pathlib import Path

# --import-mode=importlib gives test files no package; make the helpers importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))
