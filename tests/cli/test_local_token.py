"""The CLI finds a `facepipe up` stack through GET /local, which hands out credentials only with
OPS_API_TOKEN when that is set: the CLI sends the token from its own environment.

A real ops-api (uvicorn in a thread of this process) on a free port; no Redis or S3 is needed to
serve /local."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from facepipe.cli.connect import fetch_local_info
from facepipe.cli.localservers import free_port
from facepipe.core.settings import load_settings
from facepipe.ops_api.app import create_app
from facepipe.ops_api.routes.local import LOCAL_INFO_ENV

INFO = {"mode": "local", "settings": {"redis_url": "redis://127.0.0.1:1/0", "minio_secret_key": "hush"}}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(LOCAL_INFO_ENV, json.dumps(INFO))
    port = free_port()
    app = create_app(load_settings(ops_api_token="s3cret"), warm_models=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the ops-api did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def test_the_cli_sends_its_token_to_read_the_local_stack(api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPS_API_TOKEN", raising=False)
    assert fetch_local_info(api) is None  # refused without the token: no credentials leak
    monkeypatch.setenv("OPS_API_TOKEN", "s3cret")
    assert fetch_local_info(api) == INFO
