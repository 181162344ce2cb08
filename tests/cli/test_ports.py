"""Every server a test or local mode starts gets its port without a race (facepipe.cli.ports).

A server that cannot start fails its start at once, with its log; a port held by another
process is never taken for our server, and the start goes on with a new port.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from facepipe.cli import ports
from facepipe.cli.localservers import start_redis, start_seaweedfs
from facepipe.cli.ports import PortTaken, ServerStartError, launch, listening_socket, serve_in_thread


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another server listens on (a plain socket of this process) for the whole test."""
    with listening_socket() as sock:
        yield sock.getsockname()[1]


def test_a_server_that_cannot_start_fails_at_once_with_its_log(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError) as failed:
        start_redis(tmp_path / "redis", extra_args=["--no-such-option", "yes"])
    message = str(failed.value)
    # It exited, and the error says so at once: no wait for the readiness timeout.
    assert "exited with code 1" in message and "not serving" not in message
    assert f"its log {tmp_path / 'redis' / 'redis.log'}" in message
    assert "Bad directive" in message and "no-such-option" in message  # redis-server's own words
    assert not isinstance(failed.value, PortTaken)  # not a port problem: not started again


def test_seaweedfs_with_an_unusable_folder_fails_at_once_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "filerldb2").write_text("a file where the filer wants its store folder")
    with pytest.raises(ServerStartError) as failed:
        start_seaweedfs(tmp_path / "s3")
    message = str(failed.value)
    assert "exited with code" in message and f"its log {tmp_path / 's3' / 'weed.log'}" in message
    assert "filerldb2" in message


def test_a_port_held_by_another_process_is_not_taken_for_our_server(tmp_path: Path, held_port: int) -> None:
    """What hung a test for 900 s: a server that had not bound its port yet, and another process
    (there SeaweedFS) listening on it. A connect succeeds; only the owner tells them apart."""
    never_binds = [sys.executable, "-c", "import time; time.sleep(120)"]
    with pytest.raises(PortTaken) as taken:
        launch("a slow server", never_binds, tmp_path / "slow.log", [held_port], timeout=100)
    assert taken.value.port == held_port
    assert f"cannot have port {held_port}: held by pid " in str(taken.value)
    with pytest.raises(PortTaken) as refused:  # redis-server given that port: it cannot bind it
        start_redis(tmp_path / "redis", port=held_port)
    assert refused.value.port == held_port and str(tmp_path / "redis" / "redis.log") in str(refused.value)


def test_a_start_goes_on_with_a_new_port_when_its_pick_was_taken(
    tmp_path: Path, held_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([held_port])  # the first candidate is taken meanwhile, as by SeaweedFS
    real = ports.candidate_port
    monkeypatch.setattr(ports, "candidate_port", lambda offsets=(0,): next(picks, None) or real(offsets))
    server = start_redis(tmp_path / "redis")
    try:
        assert server.port != held_port
        assert server.port in ports.listened_by_tree(server.proc.pid)
        with redis.Redis(port=server.port) as client:
            assert client.ping()
    finally:
        server.stop()


def test_a_port_given_explicitly_is_not_replaced(tmp_path: Path, held_port: int) -> None:
    """A restart on its old port (an outage test) must not silently move: it fails, naming it."""
    with pytest.raises(PortTaken) as taken:
        start_seaweedfs(tmp_path / "s3", port=held_port)
    assert taken.value.port == held_port


def test_a_refused_port_refuses_and_no_server_can_take_it(refused_port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", refused_port), timeout=5)
    with pytest.raises(PortTaken) as taken:
        listening_socket(port=refused_port)
    assert taken.value.port == refused_port


def test_an_in_process_server_serves_the_socket_bound_for_it() -> None:
    async def app(scope: dict, receive: object, send: Any) -> None:  # a minimal ASGI app
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"mine"})

    with serve_in_thread(app) as url:
        assert httpx.get(url, timeout=10).text == "mine"
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(PortTaken):
            listening_socket(port=port)


def test_the_api_child_of_facepipe_up_inherits_its_socket() -> None:
    from facepipe.cli.up import child_specs

    api = child_specs({}, embedded_qdrant=True, host="127.0.0.1", port=8001, api_fd=7)[-1]
    assert api.argv[-2:] == ["--fd", "7"] and api.pass_fds == (7,)
    ops_api = child_specs({}, embedded_qdrant=False, host="127.0.0.1", port=8001, api_fd=7)[-1]
    assert ops_api.name == "ops-api" and ops_api.argv[-2:] == ["--fd", "7"] and ops_api.pass_fds == (7,)
