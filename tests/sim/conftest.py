"""The development tools of facepipe.sim: the API emulator, the operator sandbox, the images.

The emulator tests get an emulator of their own (the session one, in tests/conftest.py, may
have a running operator writing status); the helpers of tests/operator/operatorkit.py are shared.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from facepipe.operator.kube import KubeApi
from facepipe.sim.emulator import EmulatorServer, write_kubeconfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))  # for operatorkit
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for simkit, clusterkit
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))  # for reliability_images
REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = REPO_ROOT / "crds" / "facepipelines.facepipe.io.yaml"

if TYPE_CHECKING:
    from facepipe.sim.cluster import ClusterSim


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


# --- the cluster simulation (facepipe.sim.cluster): one per session, shared by every sim test ---


@pytest.fixture(scope="session")
def cluster_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSim]:
    """API emulator, operator, controllers, kubelet, backing Services, Prometheus, HPA and KEDA.

    Needs root (network and mount namespaces); the kubelet's restart back-off is 1 s and the
    operator's resync 2 s, so that tests see restarts and figures quickly.
    """
    if os.geteuid() != 0:
        pytest.skip("the cluster simulation needs root: network and mount namespaces per pod")
    from facepipe.sim.autoscaling import AutoscalingOptions
    from facepipe.sim.cluster import ClusterSim, SimConfig
    from facepipe.sim.cluster_addons import AddonOptions
    from facepipe.sim.hpa import HpaSettings
    from facepipe.sim.keda import KedaSettings
    from facepipe.sim.monitoring import MonitoringOptions

    # The controllers' flags shortened as a cluster admin may set them, so that a scenario
    # sees a scale-down within a minute or two: scrapes and rule evaluation every 2 s, alerts'
    # `for` at most 10 s, HPA sync 3 s and 20 s downscale stabilisation, KEDA polling 3 s and a
    # 20 s cooldown.
    addons = AddonOptions(
        monitoring=MonitoringOptions(scrape_interval=2, evaluation_interval=2, max_alert_for=10),
        autoscaling=AutoscalingOptions(
            hpa=HpaSettings(sync_period=3, downscale_stabilization=20),
            keda=KedaSettings(default_polling_interval=3, default_cooldown_period=20),
            adapter_relist_interval=5,
        ),
    )
    config = SimConfig(
        repo=REPO_ROOT,
        folder=tmp_path_factory.mktemp("cluster"),
        crds=[CRD_PATH],
        base_backoff=1.0,
        operator_env={"FACEPIPE_OPERATOR_RESYNC_SECONDS": "2", "FACEPIPE_OPERATOR_PURGE_RETRY_SECONDS": "2"},
        addons=addons,
    )
    with ClusterSim(config) as sim:
        yield sim


@pytest.fixture
def sim_namespace(cluster_sim: ClusterSim) -> Iterator[str]:
    """A fresh namespace with the backing Services (redis, minio, qdrant) published in it."""
    name = f"s-{uuid.uuid4().hex[:8]}"
    cluster_sim.call(cluster_sim.publish_backing(name))
    yield name
    from simkit import clear_namespace

    clear_namespace(cluster_sim, name)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The scenarios' figures (CLUSTER_SIM_FIGURES=path also writes them as Markdown)."""
    kit = sys.modules.get("scenariokit")  # imported only when a scenario ran
    if kit is None or not kit.FIGURES:
        return
    terminalreporter.section(f"cluster simulation figures (CLUSTER_SIM_SCALE={kit.SCALE:g})")
    terminalreporter.write_line(kit.figures_markdown())
    target = os.environ.get("CLUSTER_SIM_FIGURES")
    if target:
        Path(target).write_text(kit.figures_markdown() + "\n")
        terminalreporter.write_line(f"written to {target}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """A row of the figures table: the test sets ``scenario`` and ``measured``; the verdict is its outcome."""
    from scenariokit import record

    row = {"scenario": request.node.name.removeprefix("test_").replace("_", " "), "measured": "–"}
    yield row
    report = request.node.stash.get(CALL_REPORT, None)
    record(row["scenario"], row["measured"], bool(report and report.passed))
