"""One stream, one pipeline: refuse a FacePipeline whose streams another one already uses.

Two pipelines reading the same stream of the same Redis would consume each other's
messages (and apply their own settings to them) and scale on each other's backlog. By
default every tenant gets its own streams (``face-processing-queue:{<tenant>}``), so this
only happens with explicit ``spec.redis.streamName`` / stream settings, or two
FacePipelines of one tenant. The older pipeline keeps the streams (creation time, then
namespace/name); the newer one is not applied and says why (Degraded, StreamConflict).

Redis servers are compared by URL (host, port, database; a Secret's URL is read), so two
names for one server are not recognised as the same: a documented limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from facepipe.operator.builders import stream_names
from facepipe.operator.kube import FACE_PIPELINE, KubeApi, KubeApiError
from facepipe.operator.spec import PipelineSpec
from facepipe.operator.validation import SpecError, parse_spec


def redis_identity(url: str) -> str:
    """host:port/db of a Redis URL (unix: the socket path), for telling one server from another."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return f"unix:{parsed.path}"
    database = parsed.path.strip("/") or "0"
    return f"{(parsed.hostname or '').lower()}:{parsed.port or 6379}/{database}"


@dataclass(frozen=True)
class Claimant:
    namespace: str
    name: str
    uid: str
    created: str
    tenant: str
    streams: frozenset[str]
    spec: PipelineSpec

    @property
    def rank(self) -> tuple[str, str, str]:
        return (self.created, self.namespace, self.name)


def _claimant(body: Mapping[str, Any]) -> Claimant | None:
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp") and not meta.get("finalizers"):
        return None
    try:
        spec = parse_spec(meta.get("name", ""), body.get("spec"))
    except SpecError:
        return None  # never applied, so it reads no stream
    return Claimant(
        namespace=meta.get("namespace", ""),
        name=meta["name"],
        uid=meta.get("uid", ""),
        created=meta.get("creationTimestamp", ""),
        tenant=spec.tenantId,
        streams=frozenset(stream_names(spec).values()),
        spec=spec,
    )


def list_pipelines(api: KubeApi, namespaces: Iterable[str]) -> list[dict[str, Any]]:
    """Every FacePipeline the operator may see: cluster-wide, else in the given namespaces."""
    try:
        return api.list(FACE_PIPELINE, None)
    except KubeApiError as exc:
        if exc.status != 403:
            raise
    return [item for namespace in sorted(set(namespaces)) for item in api.list(FACE_PIPELINE, namespace)]


def stream_conflict(
    body: Mapping[str, Any],
    spec: PipelineSpec,
    others: Iterable[Mapping[str, Any]],
    redis_url_of: Callable[[str, PipelineSpec], str | None],
) -> str | None:
    """Why this pipeline may not use its streams (an older one on the same Redis has them), or None.

    ``redis_url_of(namespace, spec)`` resolves a pipeline's Redis URL (None: unreadable, then
    that pipeline cannot be compared and is skipped).
    """
    me = _claimant(body)
    if me is None:
        return None
    mine = None
    for other in filter(None, map(_claimant, others)):
        if other.uid == me.uid or other.rank >= me.rank:
            continue
        shared = sorted(me.streams & other.streams)
        if not shared:
            continue  # the common case, and no Secret read for it
        if mine is None:
            mine = redis_url_of(me.namespace, spec)
        theirs = redis_url_of(other.namespace, other.spec)
        if mine is None or theirs is None or redis_identity(mine) != redis_identity(theirs):
            continue
        return (
            f"stream {shared[0]} on Redis {redis_identity(mine)} is already used by FacePipeline "
            f"{other.namespace}/{other.name} (tenant {other.tenant}); two pipelines on one stream consume "
            "each other's messages. Leave spec.redis.streamName unset (each tenant gets its own stream, "
            f"face-processing-queue:{{{spec.tenantId}}}) or choose another name"
        )
    return None
