"""The CLI finds a `facepipe up` stack through GET /local, which hands out credentials only with
OPS_API_TOKEN when that is set: the CLI sends the token from its own environment.

A real ops-api (uvicorn in a thread of this process) on a free port; no Redis or S3 is needed to
serve /local."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from facepipe.cli.connect import fetch_local_info
from facepipe.cli.ports import serve_in_thread
from facepipe.core.settings import load_settings
from facepipe.ops_api.app import create_app
from facepipe.ops_api.routes.local import LOCAL_INFO_ENV

INFO = {"mode": "local", "settings": {"redis_url": "redis://127.0.0.1:1/0", "minio_secret_key": "hush"}}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv(LOCAL_INFO_ENV, json.dumps(INFO))
    app = create_app(load_settings(ops_api_token="s3cret"), warm_models=False)
    with serve_in_thread(app) as url:
        yield url


def test_the_cli_sends_its_token_to_read_the_local_stack(api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPS_API_TOKEN", raising=False)
    assert fetch_local_info(api) is None  # refused without the token: no credentials leak
    monkeypatch.setenv("OPS_API_TOKEN", "s3cret")
    assert fetch_local_info(api) == INFO
