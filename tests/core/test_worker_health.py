"""The worker's probes on its metrics port: /readyz once set up, /healthz while the loop comes round.

The kubelet probes these (the operator points startup/readiness at /readyz and liveness at
/healthz): a worker stuck in its handler must turn unhealthy so it gets restarted, and an
idle one waiting on Redis must not.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from facepipe.core.metrics import HEALTH_PATH, READY_PATH, WorkerHealth

from .conftest import Harness, wait_until


def probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, "not listening"


def test_the_heartbeat_decides_both_probes() -> None:
    health = WorkerHealth(stall_s=0.3)
    assert health.liveness()[0] == 200 and health.readiness()[0] == 503  # setting up: wait, do not kill
    health.mark_ready()
    assert health.liveness()[0] == 200 and health.readiness()[0] == 200
    wait_until(lambda: health.liveness()[0] == 503, timeout=10, what="the stall to show")
    assert "stalled" in health.liveness()[1] and health.readiness()[0] == 503
    health.beat()
    assert health.liveness()[0] == 200


def test_an_idle_worker_stays_healthy_and_a_stuck_one_does_not(harness: Harness) -> None:
    stall_s = 2.0
    worker, port = harness.start_with_metrics(WORKER_STALL_SECONDS=str(stall_s), TOY_SLEEP_S="3600")
    wait_until(lambda: probe(port, READY_PATH)[0] == 200, what=f"ready; log:\n{worker.log()[-2000:]}")
    ready_at = time.monotonic()
    # Idle (blocking on an empty stream) for longer than the stall limit: still healthy.
    while time.monotonic() - ready_at < stall_s * 2:
        assert probe(port, HEALTH_PATH)[0] == 200
        time.sleep(0.2)
    assert "facepipe_worker_inflight_messages" in probe(port, "/metrics")[1]  # /metrics as before
    harness.publish(harness.ingest_payload(1))  # the handler now sleeps for an hour: stuck
    _, text = wait_until(
        lambda: (answer := probe(port, HEALTH_PATH))[0] == 503 and answer, what="/healthz to report the stall"
    )
    assert "stalled" in text and "WORKER_STALL_SECONDS=2" in text
    assert probe(port, READY_PATH)[0] == 503
    worker.kill()


def test_readyz_waits_for_the_handler_setup(harness: Harness, refused_port: int) -> None:
    """Redis down at start: the handler's setup retries, /readyz says 503 meanwhile, /healthz 200."""
    worker, port = harness.start_with_metrics(REDIS_URL=f"redis://127.0.0.1:{refused_port}/0")
    wait_until(lambda: probe(port, HEALTH_PATH)[0] == 200, what=f"listening; log:\n{worker.log()[-2000:]}")
    code, text = probe(port, READY_PATH)
    assert code == 503 and "starting" in text
    worker.kill()


def test_a_started_worker_exports_its_counters_at_zero(harness: Harness) -> None:
    """A series born at 1 loses that increment to rate(): the stage's counters exist before any message."""
    worker, port = harness.start_with_metrics()
    wait_until(lambda: probe(port, READY_PATH)[0] == 200, what=f"ready; log:\n{worker.log()[-2000:]}")
    text = probe(port, "/metrics")[1]
    for name in (
        "facepipe_worker_msgs_acked_total",
        "facepipe_worker_dead_letters_total",
        "facepipe_worker_transient_errors_total",
        "facepipe_worker_redeliveries_total",
        "facepipe_faces_processed_total",
    ):
        assert any(line.startswith(name + "{") and line.endswith(" 0.0") for line in text.splitlines()), name
    worker.kill()
