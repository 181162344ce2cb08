"""The dead-letter queues: list their entries (GET /dlq), re-publish them (POST /dlq/replay)."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from facepipe.core.settings import Settings
from facepipe.ops_api import dlq as dlq_ops
from facepipe.ops_api.api_errors import ApiProblem
from facepipe.ops_api.dependencies import AppSettings, Backend, require_token

log = logging.getLogger("facepipe.ops_api")

STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")

router = APIRouter()


class ReplayRequest(BaseModel):
    stream: str = Field(description="a pipeline stream (or its ':dlq' name) whose DLQ to replay")
    ids: list[str] | None = Field(
        None, description="DLQ entry ids to replay; omit and set all=true for every one"
    )
    all: bool = Field(False, description="replay every entry of the DLQ")


def _source_stream(settings: Settings, name: str) -> str:
    try:
        return dlq_ops.resolve_source_stream(name, settings.pipeline_streams)
    except dlq_ops.UnknownStreamError as exc:
        raise ApiProblem(400, "unknown_stream", str(exc)) from None


@router.get("/dlq", summary="Entries of the dead-letter queues (oldest first)")
def dlq_list(
    settings: AppSettings,
    backend: Backend,
    stream: Annotated[str | None, Query(description="a pipeline stream; omit for all")] = None,
    count: Annotated[int, Query(ge=1, le=dlq_ops.MAX_LIST)] = 100,
    after: Annotated[str | None, Query(description="only entries after this id (paging)")] = None,
) -> dict[str, Any]:
    if after is not None and not STREAM_ID.match(after):
        raise ApiProblem(400, "invalid_id", f"after={after!r} is not a stream entry id like 1700000000000-0")
    streams = [_source_stream(settings, stream)] if stream else settings.pipeline_streams
    entries = []
    for name in streams:
        entries.extend(dlq_ops.list_entries(backend.redis, name, count=count, after=after))
    lengths = {name: int(backend.redis.xlen(f"{name}:dlq")) for name in streams}
    return {"entries": entries, "lengths": lengths}


@router.post(
    "/dlq/replay",
    summary="Re-publish DLQ entries to their source stream",
    dependencies=[Depends(require_token)],
)
def dlq_replay(settings: AppSettings, backend: Backend, body: ReplayRequest) -> dict[str, Any]:
    stream = _source_stream(settings, body.stream)
    if body.ids is None and not body.all:
        raise ApiProblem(
            400, "nothing_selected", "give the DLQ entry ids to replay in 'ids', or set 'all': true"
        )
    if body.ids is not None:
        bad = [i for i in body.ids if not STREAM_ID.match(i)]
        if bad:
            raise ApiProblem(400, "invalid_id", f"not stream entry ids: {', '.join(map(repr, bad[:5]))}")
    result = dlq_ops.replay(backend.redis, stream, None if body.all else body.ids)
    log.info(
        "replayed %d DLQ entries of %s to the stream (%d not found)",
        len(result.replayed),
        stream,
        len(result.missing),
    )
    return {
        "stream": stream,
        "replayed": result.replayed,
        "missing": result.missing,
        "count": len(result.replayed),
    }
