"""The development tools of facepipe.sim: the API emulator, the operator sandbox, the images.

The emulator tests get an emulator of their own (the session one, in tests/conftest.py, may
have a running operator writing status); the helpers of tests/operator/operatorkit.py are shared.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from facepipe.operator.kube import KubeApi
from facepipe.sim.emulator import EmulatorServer, write_kubeconfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))  # for operatorkit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for clusterkit
CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "facepipelines.facepipe.io.yaml"


@pytest.fixture(scope="module")
def kube_emulator() -> Iterator[EmulatorServer]:
    """An emulator of the module's own: the session one may have a running operator writing status."""
    with EmulatorServer([CRD_PATH]) as server:
        yield server


@pytest.fixture(scope="module")
def kube(kube_emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApi]:
    kubeconfig = write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig", kube_emulator.url)
    api = KubeApi.from_environment(str(kubeconfig))
    yield api
    api.close()


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"
