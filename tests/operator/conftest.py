"""The operator against a real (emulated) Kubernetes API: KMock-based emulator + Kopf.

One emulator and one Kopf operator serve the whole session (starting Kopf costs
seconds); every test works in its own namespace so tests never see each other.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for operatorkit

# Fast timers for tests; read when the handlers are imported (below, by the runner).
os.environ.setdefault("FACEPIPE_OPERATOR_RESYNC_SECONDS", "1")
os.environ.setdefault("FACEPIPE_OPERATOR_PURGE_RETRY_SECONDS", "1")

from operatorkit import wait_for


@pytest.fixture(scope="session")
def operator_runner(kubeconfig: Path) -> Iterator[Any]:
    """The real operator (Kopf, handlers of facepipe.operator.main) running against the emulator."""
    import kopf.testing

    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)  # Kopf's own login reads it
    try:
        with kopf.testing.KopfRunner(
            ["run", "--all-namespaces", "--standalone", "-m", "facepipe.operator.main"],
            timeout=60,
        ) as runner:
            from facepipe.operator.handlers.runtime import RUNTIME

            wait_for(lambda: RUNTIME.api is not None, what="the operator to start")
            yield runner
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
    assert runner.exception is None, runner.output[-5000:]
