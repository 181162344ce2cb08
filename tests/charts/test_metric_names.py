"""Every metric name the dashboards, alerts and adapter rules read is served on a real /metrics.

The live test starts the real ops-api and a real worker (the indexer, METRICS_PORT set) on the
session's Redis and SeaweedFS, scrapes both, and compares. kube-state-metrics series and
Prometheus' `up` are the documented exception (chartkit.EXTERNAL_METRIC).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from chartkit import (
    EXTERNAL_METRIC,
    adapter_exprs,
    alert_rules,
    dashboard_exprs,
    dashboards,
    exposed_names,
    promql_metric_names,
)

from facepipe.cli.ports import launch, listening_socket, with_free_ports


def used_names() -> dict[str, set[str]]:
    """Metric name -> where it is read (dashboard file, alert name, adapter)."""
    where: dict[str, set[str]] = {}
    for file, dashboard in dashboards().items():
        for expr in dashboard_exprs(dashboard):
            for name in promql_metric_names(expr):
                where.setdefault(name, set()).add(file)
    for rule in alert_rules():
        for name in promql_metric_names(rule["expr"]):
            where.setdefault(name, set()).add(f"alert {rule['alert']}")
    for expr in adapter_exprs():
        for name in promql_metric_names(expr):
            where.setdefault(name, set()).add("prometheus-adapter")
    return where


def missing_from(scraped: set[str]) -> dict[str, set[str]]:
    return {
        name: places
        for name, places in used_names().items()
        if name not in scraped and not EXTERNAL_METRIC.fullmatch(name)
    }


def test_names_are_found_in_every_source() -> None:
    where = used_names()
    assert (
        "facepipe_worker_dead_letters_total" in where
        and "alert HighDLQRate" in where["facepipe_worker_dead_letters_total"]
    )
    assert "prometheus-adapter" in where["facepipe_stream_pending"]
    assert any(p.endswith(".json") for p in where["facepipe_faces_rejected_total"])
    externals = {name for name in where if EXTERNAL_METRIC.fullmatch(name)}
    assert externals == {
        "up",
        "kube_deployment_labels",
        "kube_deployment_spec_replicas",
        "kube_deployment_status_replicas",
        "kube_deployment_status_replicas_available",
    }


def test_the_comparison_catches_an_unknown_name() -> None:
    scraped = set(used_names()) - {"facepipe_dlq_length"}
    assert set(missing_from(scraped)) == {"facepipe_dlq_length"}


def test_exposed_names_cover_families_without_samples() -> None:
    text = (
        "# HELP facepipe_worker_msgs_acked_total x\n# TYPE facepipe_worker_msgs_acked_total counter\n"
        "# HELP facepipe_message_duration_seconds x\n# TYPE facepipe_message_duration_seconds histogram\n"
        '# TYPE facepipe_stream_lag gauge\nfacepipe_stream_lag{stream="s",group="g"} 3.0\n'
    )
    assert exposed_names(text) == {
        "facepipe_worker_msgs_acked_total",
        "facepipe_message_duration_seconds_bucket",
        "facepipe_message_duration_seconds_sum",
        "facepipe_message_duration_seconds_count",
        "facepipe_stream_lag",
    }


def test_names_exist_in_the_metrics_registry() -> None:
    """The exposition of facepipe.core.metrics' registry, as every process serves it."""
    from prometheus_client import REGISTRY, generate_latest

    import facepipe.core.metrics  # noqa: F401 - registers every metric

    scraped = exposed_names(generate_latest(REGISTRY).decode())
    assert missing_from(scraped) == {}


# --------------------------------------------------------------------------- live scrape


def _start(
    args: list[str], env: dict[str, str], log: Path, pass_fds: tuple[int, ...]
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=pass_fds,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _scrape(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    pytest.fail(f"no answer from {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def live_expositions(base_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    """/metrics of a running ops-api and a running indexer worker."""
    env = {
        **os.environ,
        **base_env,
        "MODEL_PACK": "buffalo_sc",
        "MODELS_DIR": str(tmp_path / "no-models"),
        "INFERENCE_DEVICE": "cpu",
        "LOG_LEVEL": "INFO",
        "READ_BLOCK_MS": "200",
    }
    with listening_socket() as api_socket:  # the ops-api serves it (--fd): no one else can take the port
        api_port, fd = api_socket.getsockname()[1], api_socket.fileno()
        ops_api = _start(
            ["-m", "facepipe.ops_api", "--fd", str(fd)],
            {**env, "QDRANT_PATH": str(tmp_path / "qdrant-ops-api")},
            tmp_path / "ops-api.log",
            pass_fds=(fd,),
        )

    def start_indexer(port: int) -> tuple[subprocess.Popen[bytes], int]:
        """The indexer with its metrics on ``port``, once it listens there itself."""
        indexer_env = {**env, "QDRANT_PATH": str(tmp_path / "qdrant-indexer"), "METRICS_PORT": str(port)}
        argv = [sys.executable, "-m", "facepipe.indexer"]
        return launch(
            "the indexer", argv, tmp_path / "indexer.log", [port], timeout=90, env=indexer_env
        ), port

    try:
        worker, metrics_port = with_free_ports(start_indexer)
        try:
            yield {
                "ops-api": _scrape(f"http://127.0.0.1:{api_port}/metrics", ops_api, tmp_path / "ops-api.log"),
                "indexer": _scrape(
                    f"http://127.0.0.1:{metrics_port}/metrics", worker, tmp_path / "indexer.log"
                ),
            }
        finally:
            _stop(worker)
    finally:
        _stop(ops_api)


def test_names_exist_in_a_live_scrape_of_the_services(live_expositions: dict[str, str]) -> None:
    # Live, not canned: ops-api read the real streams' depth from Redis for this scrape.
    assert (
        'facepipe_stream_length{stream="face-processing-queue",stream_role="ingest"}'
        in live_expositions["ops-api"]
    )
    assert "# TYPE facepipe_worker_msgs_acked_total counter" in live_expositions["indexer"]
    scraped = set().union(*(exposed_names(text) for text in live_expositions.values()))
    assert missing_from(scraped) == {}
