"""``facepipe up --redis-cluster 3``'s Redis: a real local cluster under the data dir, the stack's
streams its tenant's (hash-tagged), what a CLI in another terminal is told, and the same cluster
again on the next start (the full stack on a cluster is driven by hand: docs/local-mode.md)."""

from __future__ import annotations

from pathlib import Path

from facepipe.cli.up import _local_info, _start_redis
from facepipe.core.redisconn import connect, masters


def test_up_redis_cluster_starts_a_persistent_local_cluster_for_one_tenants_streams(tmp_path: Path) -> None:
    env: dict[str, str] = {"QDRANT_URL": "embedded", "QDRANT_PATH": str(tmp_path / "qdrant")}
    nodes, server = _start_redis(tmp_path, env, 3, "acme")
    try:
        assert server["cluster"] and len(server["pids"]) == 3 and env["REDIS_URL"].startswith("redis+cluster://")
        assert env["REDIS_STREAM_NAME"] == "face-processing-queue:{acme}"
        info = _local_info(env, tmp_path, "http://127.0.0.1:1", {"redis": server})
        assert info["settings"]["redis_stream_name"] == "face-processing-queue:{acme}"
        client = connect(env["REDIS_URL"], decode_responses=True)
        assert len(masters(client)) == 3
        client.set("kept:{acme}", "1")
        client.close()
    finally:
        for node in nodes:
            node.stop()
    again: dict[str, str] = {}
    nodes, server = _start_redis(tmp_path, again, 3, "acme")  # the next `facepipe up`
    try:
        assert again["REDIS_URL"] == env["REDIS_URL"]
        assert connect(again["REDIS_URL"], decode_responses=True).get("kept:{acme}") == "1"
    finally:
        for node in nodes:
            node.stop()
