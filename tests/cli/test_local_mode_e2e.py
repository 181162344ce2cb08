"""End to end through the CLI: `facepipe up` in a subprocess, every other command from "another terminal".

One local stack (embedded Redis, SeaweedFS, embedded Qdrant, the real models) serves the
whole module; each test uses its own tenants so it does not depend on the others' data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from facepipe.cli.localservers import free_port
from facepipe.core.settings import Settings, load_settings
from facepipe.store.storage import ObjectStore, image_prefix

pytestmark = pytest.mark.slow

# Variables of a developer's shell that would point the stack elsewhere.
_SCRUBBED = (
    "REDIS_",
    "MINIO_",
    "QDRANT_",
    "BUCKET_",
    "OPS_API_",
    "FACEPIPE_",
    "FACE_",
    "DEDUP_",
    "GLOBAL_DEDUP",
    "ENABLE_",
    "WORKER_",
    "MODEL_PACK",
    "DETECTED_STREAM",
    "EMBEDDED_STREAM",
)


@dataclass
class Stack:
    api: str
    proc: subprocess.Popen
    env: dict[str, str]
    data_dir: Path
    local: dict[str, Any]

    @property
    def settings(self) -> Settings:
        return load_settings(**self.local["settings"])

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.local["settings"]["redis_url"], decode_responses=True)

    def cli(self, *args: str, expect: int = 0, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "facepipe.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == expect, (
            f"facepipe {' '.join(args)} -> {result.returncode}\n"
            f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}"
        )
        return result

    def cli_json(self, *args: str, expect: int = 0) -> Any:
        return json.loads(self.cli(*args, "--json", expect=expect).stdout)

    def log(self) -> str:
        return (self.data_dir / "up.log").read_text(errors="replace")


def _wait_ready(api: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "facepipe up exited during start-up"
        try:
            if httpx.get(f"{api}/ready", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{api}/ready not 200 within {timeout}s")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("facepipe-up")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(
        {
            "MODELS_DIR": str(models_dir),
            "INFERENCE_DEVICE": "cpu",
            "ORT_INTRA_OP_THREADS": "1",
            "FACEPIPE_API": api,
            "PYTHONUNBUFFERED": "1",
            "READ_BLOCK_MS": "500",
        }
    )
    with open(data_dir / "up.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "facepipe.cli",
                "up",
                "--data-dir",
                str(data_dir / "stack"),
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(api, proc, timeout=240)
        local = httpx.get(f"{api}/local", timeout=10).json()
        yield Stack(api, proc, env, data_dir, local)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Servers live in their own sessions: make sure none outlives the test.
        for server in (proc_info := locals().get("local", {})).get("servers", {}).values():
            if server.get("pid") and psutil.pid_exists(server["pid"]):
                os.killpg(server["pid"], signal.SIGKILL)
        del proc_info


def _identity(faces_manifest: dict[str, dict], url: str) -> str | None:
    return faces_manifest.get(Path(url).name, {}).get("identity")


def test_two_tenants_counts_match_manifest_and_search_stays_in_tenant(
    stack: Stack, faces_dir: Path, faces_manifest: dict[str, dict]
) -> None:
    manifest_faces = sum(photo["faces"] for photo in faces_manifest.values())
    before = httpx.get(f"{stack.api}/stats").json()["counters"]
    summaries = {}
    for tenant in ("alpha", "beta"):
        summary = stack.cli_json(
            "ingest", str(faces_dir), "--tenant", tenant, "--site", f"{tenant}.example", "--wait"
        )
        assert summary["images"] == len(faces_manifest)
        assert summary["dlq"] == 0 and summary["drained"] is True
        # Every face the MANIFEST counts is accounted for: indexed, rejected (quality) or a duplicate.
        assert (
            summary["faces_processed"] + summary["faces_rejected"] + summary["faces_dup_skipped"]
            == manifest_faces
        )
        assert summary["faces_processed"] >= manifest_faces - 2
        tenant_stats = httpx.get(f"{stack.api}/stats", params={"tenant_id": tenant}).json()["counters"]
        assert tenant_stats["faces_processed"] == summary["faces_processed"]
        assert tenant_stats["worker_msgs_acked"] == len(faces_manifest)
        summaries[tenant] = summary
    after = httpx.get(f"{stack.api}/stats").json()["counters"]
    assert after["faces_processed"] - before["faces_processed"] == sum(
        s["faces_processed"] for s in summaries.values()
    )

    result = stack.cli_json("search", str(faces_dir / "obama_3.jpg"), "--tenant", "alpha", "--top-k", "50")
    [face] = result["faces"]
    matches = face["matches"]
    # Only tenant alpha's faces, all of them, none of beta's (same photos, same sha256s).
    assert {m["site"] for m in matches} == {"alpha.example"}
    assert len(matches) == summaries["alpha"]["faces_processed"]
    assert len({m["point_id"] for m in matches}) == len(matches)
    close = [m for m in matches if m["score"] >= 0.5]
    identities = {_identity(faces_manifest, m["url"]) for m in close} - {None}
    assert identities == {"obama"}
    assert {"obama_1.jpg", "obama_2.jpg", "obama_3.jpg"} <= {Path(m["url"]).name for m in close}
    assert Path(matches[0]["url"]).name == "obama_3.jpg" and matches[0]["score"] > 0.95
    best = matches[0]
    assert best["artifacts"]["crop"]["key"].startswith(f"alpha/{best['image_sha256'][:2]}/")
    assert len(best["bbox"]) == 4
    # The human-readable form prints the same best match.
    assert (
        best["image_sha256"][:16]
        in stack.cli("search", str(faces_dir / "obama_3.jpg"), "--tenant", "alpha").stdout
    )


def test_second_ingest_of_the_same_photos_is_all_dup_skipped(stack: Stack, faces_dir: Path) -> None:
    photos = [str(faces_dir / name) for name in ("obama_1.jpg", "biden_1.jpg", "two_people.jpg")]
    first = stack.cli_json("ingest", *photos, "--tenant", "gamma", "--wait")
    assert first["faces_processed"] >= 3 and first["faces_dup_skipped"] == 0
    second = stack.cli_json("ingest", *photos, "--tenant", "gamma", "--wait")
    assert second["images"] == 3
    assert second["faces_processed"] == 0
    assert second["faces_dup_skipped"] == first["faces_processed"]


def test_delete_image_removes_points_artifacts_dedup_and_allows_reingest(
    stack: Stack, faces_dir: Path
) -> None:
    obama, biden = faces_dir / "obama_1.jpg", faces_dir / "biden_1.jpg"
    stack.cli_json("ingest", str(obama), str(biden), "--tenant", "delta", "--wait")
    search = stack.cli_json("search", str(obama), "--tenant", "delta")
    sha = search["faces"][0]["matches"][0]["image_sha256"]
    settings = stack.settings
    store = ObjectStore(settings)
    prefix = image_prefix("delta", sha)
    stored = {b: list(store.list_keys(b, prefix)) for b in store.buckets}
    assert all(stored.values()), stored  # raw image, crop, thumb and metadata exist

    report = stack.cli_json("delete", "image", sha, "--tenant", "delta")
    assert report["points"] == 1 and report["artifacts"] == 3 and report["raw_objects"] == 1
    assert report["dedup_entries"] == 1
    assert all(not list(store.list_keys(b, prefix)) for b in store.buckets)
    remaining = stack.cli_json("search", str(obama), "--tenant", "delta")["faces"][0]["matches"]
    assert sha not in {m["image_sha256"] for m in remaining}
    assert len(remaining) == 1  # biden is still there
    assert not stack.redis().exists(f"dedup:t:delta:img:{sha}")

    again = stack.cli_json("ingest", str(obama), "--tenant", "delta", "--wait")
    assert (again["faces_processed"], again["faces_dup_skipped"]) == (1, 0)
    found = stack.cli_json("search", str(obama), "--tenant", "delta")["faces"][0]["matches"]
    assert found[0]["image_sha256"] == sha and found[0]["score"] > 0.95


def test_dlq_list_and_replay_of_malformed_and_failed_messages(stack: Stack, faces_dir: Path) -> None:
    settings = stack.settings
    client = stack.redis()
    stream = settings.ingest_stream
    missing_key = "eps/later/obama_2.jpg"
    client.xadd(stream, {"message": '{"invalid":"json'})
    client.xadd(
        stream,
        {
            "message": json.dumps(
                {
                    "image_sha256": "later0001",
                    "bucket": settings.bucket_raw,
                    "key": missing_key,
                    "tenant_id": "eps",
                    "site": "",
                    "url": "",
                    "image_phash": None,
                    "face_hints": None,
                }
            )
        },
    )
    deadline = time.monotonic() + 60
    while client.xlen(f"{stream}:dlq") < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    listed = stack.cli_json("dlq", "list")
    reasons = {e["reason"]: e for e in listed["entries"]}
    assert {"invalid_json", "object_not_found"} <= set(reasons)
    assert reasons["invalid_json"]["payload_raw"] == '{"invalid":"json'
    assert missing_key in reasons["object_not_found"]["error"]
    assert "object_not_found" in stack.cli("dlq", "list").stdout

    # Fix the cause (the object now exists), then replay everything.
    ObjectStore(settings).put_bytes(
        settings.bucket_raw, missing_key, (faces_dir / "obama_2.jpg").read_bytes()
    )
    replay = stack.cli_json("dlq", "replay", "--all")
    assert set(replay["replayed"]) >= {reasons["invalid_json"]["id"], reasons["object_not_found"]["id"]}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        counters = httpx.get(f"{stack.api}/stats", params={"tenant_id": "eps"}).json()["counters"]
        if counters["faces_processed"] == 1:
            break
        time.sleep(0.3)
    assert counters["faces_processed"] == 1  # the replayed message went through the whole pipeline
    after = stack.cli_json("dlq", "list")["entries"]
    assert [e["reason"] for e in after].count("invalid_json") == 1  # still malformed: back in the DLQ
    assert "object_not_found" not in {e["reason"] for e in after}


def test_dedup_flush_and_ensure_against_the_local_stack(stack: Stack, faces_dir: Path) -> None:
    stack.cli_json("ingest", str(faces_dir / "biden_2.jpg"), "--tenant", "theta", "--wait")
    client = stack.redis()
    assert list(client.scan_iter("dedup:t:theta:*"))
    other = len(list(client.scan_iter("dedup:t:alpha:*")))
    flushed = stack.cli("dedup-flush", "--tenant", "theta").stdout
    assert "dedup keys (tenant theta)" in flushed
    assert not list(client.scan_iter("dedup:t:theta:*"))
    assert len(list(client.scan_iter("dedup:t:alpha:*"))) == other  # other tenants untouched

    ensured = stack.cli("ensure").stdout
    for stream in stack.settings.pipeline_streams:
        assert f"consumer group pipeline on {stream}: exists" in ensured
    assert "all exist" in ensured and "held by the running `facepipe up`" in ensured


def test_ready_turns_503_when_s3_is_paused_and_recovers(stack: Stack) -> None:
    s3_pid = stack.local["servers"]["s3"]["pid"]
    os.killpg(s3_pid, signal.SIGSTOP)
    try:
        body = stack.cli_json("ready", expect=1)
        assert body["checks"]["storage"] == "unhealthy"
        assert "did not answer" in body["errors"]["storage"]
        assert body["checks"]["queue"] == "healthy"
    finally:
        os.killpg(s3_pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while httpx.get(f"{stack.api}/ready", timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "not ready again after S3 resumed"
        time.sleep(0.5)


def test_killed_worker_is_restarted(stack: Stack) -> None:
    supervisor = psutil.Process(stack.local["supervisor_pid"])

    def detector_pids() -> set[int]:
        pids = set()
        for child in supervisor.children():
            try:
                if (
                    "facepipe.detector" in " ".join(child.cmdline())
                    and child.status() != psutil.STATUS_ZOMBIE
                ):
                    pids.add(child.pid)
            except psutil.Error:  # exited while we looked
                continue
        return pids

    restarted = re.compile(r"restarted detector \(restart #(\d+)\): pid (\d+)")
    before = restarted.findall(stack.log())
    detector_log = stack.data_dir / "stack" / "logs" / "detector.log"
    started_before = detector_log.read_text().count("Worker started, waiting for messages")
    [old] = detector_pids()
    os.kill(old, signal.SIGKILL)
    # The supervisor's own account of the restart (its event names the new process), not a time
    # window: a loaded machine may take long to notice, back off and start a Python process.
    deadline = time.monotonic() + 600
    while len(restarted.findall(stack.log())) == len(before):
        assert time.monotonic() < deadline, f"no restart of the detector:\n{stack.log()[-3000:]}"
        time.sleep(0.2)
    number, pid = restarted.findall(stack.log())[len(before)]
    assert int(number) == len(before) + 1 and int(pid) != old
    assert f"detector (pid {old}) exited with code -9" in stack.log() and "restarting in" in stack.log()
    assert int(pid) in detector_pids()
    # The new detector consumes again (its start-up block is logged once more).
    while detector_log.read_text().count("Worker started, waiting for messages") <= started_before:
        assert time.monotonic() < deadline, "the restarted detector never started consuming"
        time.sleep(0.2)


def test_runbook_scripts_keep_working(stack: Stack, faces_dir: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    published = subprocess.run(
        [sys.executable, str(root / "scripts" / "publish_test_message.py"), "--tenant", "runbook"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert published.returncode == 0, published.stderr
    lines = published.stdout.splitlines()
    assert lines[0] == "✅ Published test message to stream 'face-processing-queue'"
    assert lines[1].startswith("   Message ID: ") and lines[2] == "   Field: message"
    assert json.loads(lines[3].removeprefix("   Payload: "))["tenant_id"] == "runbook"

    folder = subprocess.run(
        [
            sys.executable,
            str(root / "scripts" / "process_folder.py"),
            "--path",
            str(faces_dir),
            "--tenant",
            "runbook",
        ],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert folder.returncode == 0, folder.stderr
    assert "ingest summary" in folder.stdout
    counters = httpx.get(f"{stack.api}/stats", params={"tenant_id": "runbook"}).json()["counters"]
    # The drained pipeline has processed the test message (t1.jpg: 6 faces) and the folder.
    assert counters["worker_msgs_acked"] == 1 + 8
    assert counters["faces_processed"] + counters["faces_rejected"] + counters["faces_dup_skipped"] == 6 + 11


def test_sigterm_stops_everything_cleanly(stack: Stack) -> None:
    supervisor = psutil.Process(stack.local["supervisor_pid"])
    children = supervisor.children(recursive=False)
    servers = [s["pid"] for s in stack.local["servers"].values()]
    os.killpg(stack.proc.pid, signal.SIGTERM)
    assert stack.proc.wait(timeout=90) == 0
    for pid in [c.pid for c in children] + servers:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    log = stack.log()
    assert "SIGTERM received: stopping" in log
    assert "detector stopped (exit code 0)" in log and "api+indexer stopped (exit code 0)" in log
    assert not (stack.data_dir / "stack" / "local.json").exists()
