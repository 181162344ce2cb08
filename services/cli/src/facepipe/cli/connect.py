"""How a CLI command finds the pipeline: through the ops-api, or through the environment.

``facepipe up`` serves its addresses at ``GET /local`` of its ops-api, so
``facepipe ingest`` in another terminal needs no environment at all. When no
local stack answers (a real deployment, a port-forwarded ops-api), the usual
environment variables (REDIS_URL, MINIO_ENDPOINT, ...) apply.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx
import redis

from facepipe.core.settings import Settings, load_settings

DEFAULT_API = "http://127.0.0.1:8001"


def default_api() -> str:
    return os.environ.get("FACEPIPE_API", DEFAULT_API)


class ApiUnreachableError(RuntimeError):
    pass


@dataclass
class Target:
    """The settings a command uses, and whether they came from a running `facepipe up`."""

    settings: Settings
    api: str
    local: dict[str, Any] | None

    @property
    def source(self) -> str:
        return f"local stack at {self.api}" if self.local else "REDIS_URL/MINIO_ENDPOINT from the environment"


def fetch_local_info(api: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """The /local document of a `facepipe up` ops-api, or None (nothing answers, or not local mode).

    It holds the stack's credentials: an ops-api with OPS_API_TOKEN set hands it out only with
    the token, which is read from this process's OPS_API_TOKEN too."""
    token = os.environ.get("OPS_API_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{api.rstrip('/')}/local", timeout=timeout_s, headers=headers)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    return response.json()


def resolve(api: str | None = None) -> Target:
    api = (api or default_api()).rstrip("/")
    local = fetch_local_info(api)
    overrides = dict(local.get("settings", {})) if local else {}
    return Target(settings=load_settings(**overrides), api=api, local=local)


def pipeline_redis(target: Target) -> redis.Redis:
    """A client of the pipeline's Redis, for the commands that read or write it directly."""
    return redis.Redis.from_url(target.settings.redis_url, socket_timeout=30, socket_connect_timeout=5)


class OpsApiClient:
    """Thin HTTP client of the ops-api with readable errors."""

    def __init__(self, api: str | None = None, token: str | None = None, timeout_s: float = 60.0) -> None:
        self.api = (api or default_api()).rstrip("/")
        token = token if token is not None else os.environ.get("OPS_API_TOKEN", "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.api, headers=headers, timeout=timeout_s)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ApiUnreachableError(
                f"no ops-api answers at {self.api}: start the local stack with `facepipe up`, "
                "or pass --api URL (or set FACEPIPE_API)"
            ) from None
        except httpx.HTTPError as exc:
            raise ApiUnreachableError(f"ops-api at {self.api}: {exc}") from None

    def json(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code not in ok:
            raise ApiCallError(response)
        return response.json()

    def close(self) -> None:
        self._client.close()


class ApiCallError(RuntimeError):
    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
            message = body.get("message") or body.get("detail") or response.text
        except ValueError:
            message = response.text[:300]
        super().__init__(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}: {message}"
        )
        self.status = response.status_code
