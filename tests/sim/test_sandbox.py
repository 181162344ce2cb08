"""`make operator-sandbox` end to end: the sandbox process, driven by the real kubectl."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from operatorkit import EXAMPLES, REPO_ROOT, wait_for

from facepipe.cli.programs import which_program

KUBECTL = which_program("kubectl")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    assert KUBECTL, "this test drives the sandbox with kubectl: `make install` puts it in .venv/bin"
    env = {**os.environ, "FACEPIPE_OPERATOR_RESYNC_SECONDS": "1"}
    env.pop("KUBECONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "facepipe.sim.sandbox", "--dir", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    kubeconfig = tmp_path / "kubeconfig"
    try:
        wait_for(lambda: kubeconfig.exists() or process.poll() is not None, what="the sandbox kubeconfig")
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        yield kubeconfig
    finally:
        process.send_signal(signal.SIGINT)  # as Ctrl-C
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        assert process.returncode == 0, output[-3000:]
        assert not kubeconfig.exists()  # removed on the way out


def kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_kubectl_apply_get_and_delete_against_the_sandbox(sandbox: Path) -> None:
    applied = kubectl(sandbox, "apply", "--validate=false", "-f", str(EXAMPLES / "facepipeline.yaml"))
    assert "facepipeline.facepipe.io/demo created" in applied

    deployments = wait_for(
        lambda: (
            (out := kubectl(sandbox, "get", "deployments", "-o", "name")).count("deployment.apps/") == 4
            and out
        ),
        what="four Deployments",
    )
    assert set(deployments.split()) == {
        f"deployment.apps/demo-{c}" for c in ("detector", "embedder", "indexer", "ops-api")
    }
    configmaps = kubectl(sandbox, "get", "configmaps")
    assert "demo-config" in configmaps
    dedup = kubectl(sandbox, "get", "configmap", "demo-config", "-o", "jsonpath={.data.DEDUP_MAX_HAMMING}")
    assert dedup == "8"
    pipelines = wait_for(
        lambda: (out := kubectl(sandbox, "get", "facepipelines")) and "0/4" in out and out,
        what="printer columns with a status",
    )
    header = pipelines.splitlines()[0].split()
    assert header == ["NAME", "TENANT", "PHASE", "INGEST-LAG", "READY", "PACK", "AGE"]
    assert pipelines.splitlines()[1].split()[:2] == ["demo", "demo"]
    assert (
        "No resources found"
        in subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(sandbox), "get", "hpa"], capture_output=True, text=True
        ).stderr
    )

    kubectl(
        sandbox,
        "patch",
        "facepipeline",
        "demo",
        "--type",
        "merge",
        "-p",
        '{"spec":{"components":{"embedder":{"autoscaling":{"enabled":true}}}}}',
    )
    wait_for(lambda: "demo-embedder" in kubectl(sandbox, "get", "hpa"), what="the HPA after kubectl patch")

    assert 'facepipeline.facepipe.io "demo" deleted' in kubectl(sandbox, "delete", "facepipeline", "demo")
    wait_for(
        lambda: kubectl(sandbox, "get", "deployments", "-o", "name").strip() == "",
        what="the children collected with their owner",
    )
