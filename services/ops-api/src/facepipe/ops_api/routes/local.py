"""GET /local: the addresses of the stack `facepipe up` started, so a CLI in another terminal
finds its Redis and S3 without any environment of its own."""

from __future__ import annotations

import json
import os
from typing import Any

from fastapi import APIRouter, Depends

from facepipe.ops_api.api_errors import ApiProblem
from facepipe.ops_api.dependencies import require_token

# Set by `facepipe up` in the environment of the ops-api it starts.
LOCAL_INFO_ENV = "FACEPIPE_LOCAL_INFO"

router = APIRouter()


def local_mode() -> bool:
    return bool(os.environ.get(LOCAL_INFO_ENV))


# It hands out the S3 secret key and the Redis URL: guarded by the token like mutating routes.
@router.get(
    "/local",
    summary="Local mode only: where this stack's Redis and S3 are (for the CLI)",
    dependencies=[Depends(require_token)],
)
def local() -> dict[str, Any]:
    raw = os.environ.get(LOCAL_INFO_ENV)
    if not raw:
        raise ApiProblem(404, "not_local_mode", "this ops-api was not started by `facepipe up`")
    return json.loads(raw)
