"""Every metric of docs/design.md's table exists with its type and labels, and /metrics serves them."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

from facepipe.cli.ports import PortTaken, with_free_ports
from facepipe.cli.programs import find_program, which_program
from facepipe.core import metrics

DESIGN = Path(__file__).resolve().parents[2] / "docs" / "design.md"


def _design_table() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the "Prometheus metric names" table of docs/design.md."""
    rows = {}
    for line in DESIGN.read_text().splitlines():
        match = re.match(r"\|\s*(facepipe_\w+)\s*\|\s*(\w+)\s*\|\s*([^|]*)\|", line)
        if match:
            labels_text = re.sub(r"\(.*?\)", "", match.group(3))
            labels = {label.strip() for label in labels_text.split(",") if label.strip() not in {"", "—"}}
            rows[match.group(1)] = (match.group(2), labels)
    return rows


def test_every_design_metric_exists_with_its_type_and_labels() -> None:
    table = _design_table()
    assert len(table) >= 19
    families = {family.name: family for family in REGISTRY.collect()}
    defined = {
        name: obj
        for name, obj in vars(metrics).items()
        if hasattr(obj, "_labelnames") and hasattr(obj, "_type")
    }
    by_exposed_name = {}
    for obj in defined.values():
        exposed = obj._name + ("_total" if obj._type == "counter" else "")
        by_exposed_name[exposed] = obj
    for name, (kind, labels) in table.items():
        assert name in by_exposed_name, f"{name} is in docs/design.md but not in facepipe.core.metrics"
        obj = by_exposed_name[name]
        assert obj._type == kind, name
        assert set(obj._labelnames) == labels, name
        assert obj._name in families


@pytest.mark.skipif(which_program("promtool") is None, reason="promtool: apt-get install prometheus")
def test_exposition_passes_promtool_lint() -> None:
    metrics.WORKER_MSGS_ACKED.labels(stage="detector").inc(0)
    metrics.STAGE_DURATION.labels(stage="detection").observe(0.01)
    result = subprocess.run(
        [find_program("promtool"), "check", "metrics"],
        input=generate_latest(REGISTRY),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_metrics_server_serves_the_registry_and_zero_means_off() -> None:
    assert metrics.start_metrics_server(0) is None

    def serve(port: int) -> tuple[Any, int]:
        try:
            return metrics.start_metrics_server(port, addr="127.0.0.1"), port
        except RuntimeError as exc:  # taken since it was picked: on another one
            raise PortTaken(port, str(exc)) from exc

    server, port = with_free_ports(serve)
    try:
        metrics.WORKER_MSGS_DLQ.labels(stage="embedder", reason="invalid_json").inc()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert 'facepipe_worker_msgs_dlq_total{reason="invalid_json",stage="embedder"}' in body
        assert "# TYPE facepipe_stage_duration_seconds histogram" in body
        with pytest.raises(RuntimeError, match=f"METRICS_PORT={port}"):
            metrics.start_metrics_server(port, addr="127.0.0.1")
    finally:
        server.shutdown()
        server.server_close()
