"""The operator against a real (emulated) Kubernetes API: KMock-based emulator + Kopf.

One emulator and one Kopf operator serve the whole session (starting Kopf costs
seconds); every test works in its own namespace so tests never see each other.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for operatorkit

# Fast timers for tests; read when the handlers are imported (below, by the runner).
os.environ.setdefault("FACEPIPE_OPERATOR_RESYNC_SECONDS", "1")
os.environ.setdefault("FACEPIPE_OPERATOR_PURGE_RETRY_SECONDS", "1")
# The emulator has no server-side apply: the in-process operator writes children by merge
# patches here. Server-side apply is tested on a real kube-apiserver (test_server_side_apply.py).
os.environ.setdefault("FACEPIPE_OPERATOR_APPLY", "merge")

from operatorkit import CRD_PATH, wait_for


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


@pytest.fixture(scope="session")
def real_apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real kube-apiserver + etcd (realapi.py) with the FacePipeline CRD; skipped without the binaries."""
    import realapi
    import yaml

    from facepipe.operator.kube import CRD, KubeApi

    found = realapi.find_binaries()
    if isinstance(found, str):
        pytest.skip(found)
    server = realapi.start_apiserver(tmp_path_factory.mktemp("apiserver"), found)
    try:
        api = KubeApi.from_environment(str(server.kubeconfig))
        crd = yaml.safe_load(CRD_PATH.read_text())
        api.create(crd)
        wait_for(
            lambda: any(
                c.get("type") == "Established" and c.get("status") == "True"
                for c in ((api.get(CRD, None, crd["metadata"]["name"]) or {}).get("status") or {}).get(
                    "conditions"
                )
                or []
            ),
            timeout=60,
            what="the FacePipeline CRD established",
        )
        api.close()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_kube(real_apiserver: Any) -> Iterator[Any]:
    """A client of :func:`real_apiserver` as its admin."""
    from facepipe.operator.kube import KubeApi

    api = KubeApi.from_environment(str(real_apiserver.kubeconfig))
    yield api
    api.close()


@pytest.fixture
def real_namespace(real_kube: Any) -> str:
    """A fresh namespace on the real API server (it must exist there, unlike on the emulator)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    real_kube.request(
        "POST",
        "/api/v1/namespaces",
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    return name
