"""Reconcile one FacePipeline: children, status, stream figures, and the purge on deletion."""

from __future__ import annotations

import base64
import logging
from typing import Any

import kopf
import redis

from facepipe.core.redisconn import as_cluster_url
from facepipe.core.settings import Settings
from facepipe.operator.addresses import is_url, qualify_endpoint, qualify_url
from facepipe.operator.apply import ApplyResult, apply_children
from facepipe.operator.builders import PipelineRef, build_children, secret_env, shared_env, stream_names
from facepipe.operator.claims import list_pipelines, stream_conflict
from facepipe.operator.constants import COMPONENTS
from facepipe.operator.consumers import prune_at
from facepipe.operator.handlers import runtime
from facepipe.operator.handlers.runtime import RUNTIME
from facepipe.operator.kube import FACE_PIPELINE, SECRET, KubeApi, KubeApiError
from facepipe.operator.packs import (
    PackPlan,
    build_reembed_job,
    deployed_spec,
    job_failure,
    pack_condition,
    pack_status,
    plan_packs,
    read_record,
)
from facepipe.operator.purge import settings_from_env
from facepipe.operator.spec import PipelineSpec
from facepipe.operator.status import (
    ComponentState,
    Observation,
    component_state,
    compute_status,
    status_patch,
)
from facepipe.operator.stream_figures import read_stream_figures
from facepipe.operator.validation import SpecError, parse_spec

Logger = logging.Logger | logging.LoggerAdapter


class SecretValueError(Exception):
    pass


def read_secret_value(api: KubeApi, namespace: str, name: str, key: str) -> str:
    try:
        secret = api.get(SECRET, namespace, name)
    except KubeApiError as exc:
        if exc.status != 403:
            raise
        raise SecretValueError(
            f"the operator may not read Secret {name!r} in namespace {namespace!r} (forbidden): a "
            "cluster-wide operator reads Secrets only in the operator chart's rbac.secretNamespaces"
        ) from None
    if secret is None:
        raise SecretValueError(f"Secret {name!r} not found")
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    encoded = (secret.get("data") or {}).get(key)
    if encoded is None:
        raise SecretValueError(f"Secret {name!r} has no key {key!r}")
    return base64.b64decode(encoded).decode()


def redis_url(api: KubeApi, namespace: str, spec: PipelineSpec) -> str:
    """The Redis URL of the CR (a redis+cluster:// one when spec.redis.cluster says so)."""
    if spec.redis.url is not None:
        url = spec.redis.url
    else:
        assert spec.redis.urlSecretRef is not None
        url = read_secret_value(api, namespace, spec.redis.urlSecretRef.name, spec.redis.urlSecretRef.key)
    url = as_cluster_url(url) if spec.redis.is_cluster else url
    return qualify_url(url, namespace)


def tenant_settings(api: KubeApi, namespace: str, spec: PipelineSpec) -> Settings:
    """The settings a component of this pipeline sees, Secrets resolved (for the purge)."""
    env = dict(shared_env(spec))
    for name, ref in secret_env(spec).items():
        env[name] = read_secret_value(api, namespace, ref["name"], ref["key"])
    # The pods' addresses, as the operator (in another namespace) reaches them.
    for name in ("REDIS_URL", "QDRANT_URL"):
        if env.get(name) and is_url(env[name]):
            env[name] = qualify_url(env[name], namespace)
    if env.get("MINIO_ENDPOINT"):
        env["MINIO_ENDPOINT"] = qualify_endpoint(env["MINIO_ENDPOINT"], namespace)
    return settings_from_env(env)


def _components(spec: PipelineSpec, result: ApplyResult, owner: PipelineRef) -> dict[str, ComponentState]:
    states = {}
    for component in COMPONENTS:
        deployment = result.live.get(f"Deployment/{owner.name}-{component}")
        if deployment is None:
            continue
        comp_spec = spec.components.opsApi if component == "ops-api" else spec.worker(component)
        scaling = comp_spec.autoscaling
        autoscaler = scaling.provider if scaling.enabled else ""
        states[component] = component_state(deployment, autoscaler, scaling.minReplicas)
    return states


def _read_streams(
    api: KubeApi, namespace: str, spec: PipelineSpec, logger: Logger
) -> tuple[list[dict[str, Any]], str | None]:
    """The stream figures for the status; first the consumers of gone pods leave the groups."""
    try:
        url = redis_url(api, namespace, spec)
        if spec.redis.staleConsumerSeconds:
            group, idle = spec.redis.groupName, spec.redis.staleConsumerSeconds
            for stream, names in prune_at(url, stream_names(spec).values(), group, idle).items():
                logger.info("removed %d idle consumers from %s: %s", len(names), stream, ", ".join(names))
        figures = read_stream_figures(url, stream_names(spec), spec.redis.groupName)
    except SecretValueError as exc:
        return [], f"cannot read the Redis URL: {exc}"
    except (redis.RedisError, OSError) as exc:
        return [], f"cannot read stream figures from Redis: {type(exc).__name__}: {exc}"
    return [figure.as_status() for figure in figures], None


def _plan_packs(
    api: KubeApi, namespace: str, spec: PipelineSpec, previous: dict[str, Any], logger: Logger
) -> PackPlan:
    """What the tenant's migration record says about packs; the last status's word when Redis is away."""
    try:
        record = read_record(redis_url(api, namespace, spec), spec.vectorDb.collection, spec.tenantId)
    except (SecretValueError, redis.RedisError, OSError) as exc:
        logger.warning("cannot read the model-pack record of tenant %s: %s", spec.tenantId, exc)
        models = previous.get("models") or {}
        if models.get("desiredPack") != spec.models.pack:
            return plan_packs(spec.models.pack, None)
        phase = (models.get("migration") or {}).get("phase")
        job = phase not in (None, "Complete", "RolledBack")
        active, deployed = models.get("pack", spec.models.pack), models.get("deployedPack", spec.models.pack)
        return PackPlan(spec.models.pack, active, deployed, migrating=job, record=None)
    return plan_packs(spec.models.pack, record)


def _stream_conflict(api: KubeApi, body: dict[str, Any], spec: PipelineSpec) -> str | None:
    def url_of(namespace: str, other: PipelineSpec) -> str | None:
        try:
            return redis_url(api, namespace, other)
        except SecretValueError:
            return None  # cannot tell which Redis: not compared

    others = list_pipelines(api, RUNTIME.visible_namespaces(body["metadata"]["namespace"]))
    return stream_conflict(body, spec, others, url_of)


def reconcile(
    api: KubeApi,
    namespace: str,
    name: str,
    *,
    read_streams: bool,
    logger: Logger,
    expected_uid: str | None = None,
) -> Observation | None:
    """One level-based pass over the FacePipeline as it is now; None when it is gone or going."""
    body = api.get(FACE_PIPELINE, namespace, name)
    if body is None or (expected_uid and body["metadata"].get("uid") != expected_uid):
        return None
    uid = body["metadata"]["uid"]
    with RUNTIME.lock_for(uid):
        body = api.get(FACE_PIPELINE, namespace, name)  # fresh, now that no other pass runs
        if body is None or body["metadata"].get("uid") != uid or body["metadata"].get("deletionTimestamp"):
            return None
        generation = int(body["metadata"].get("generation", 1))
        previous = body.get("status") or {}
        try:
            spec = parse_spec(name, body.get("spec"))
        except SpecError as exc:
            logger.warning("FacePipeline %s/%s has an invalid spec: %s", namespace, name, exc)
            obs = Observation(generation=generation, spec_error=str(exc))
            write_status(api, namespace, name, obs, previous)
            return obs
        conflict = _stream_conflict(api, body, spec)
        if conflict:
            logger.warning("FacePipeline %s/%s not applied: %s", namespace, name, conflict)
            obs = Observation(generation=generation, conflict_error=conflict)
            write_status(api, namespace, name, obs, previous)
            return obs
        owner = PipelineRef(name, namespace, uid)
        packs = _plan_packs(api, namespace, spec, previous, logger)
        deployed = deployed_spec(spec, packs.deployed)  # the old pack until the new one is loaded
        children = build_children(owner, deployed)
        job = build_reembed_job(owner, deployed, packs) if packs.job else None
        if job is not None:
            children.append(job)
        apply_error = None
        result = ApplyResult()
        try:
            result = apply_children(api, namespace, name, uid, children, mode=RUNTIME.apply_mode)
        except KubeApiError as exc:
            if exc.status >= 500 or exc.status == 429:
                raise  # the API server's trouble: Kopf retries with backoff
            apply_error = f"applying children failed: {exc}"
            if exc.not_found and "scaledobjects" in str(exc).lower() + exc.message.lower():
                apply_error = "KEDA is not installed (scaledobjects.keda.sh): " + apply_error
            logger.error("FacePipeline %s/%s: %s", namespace, name, apply_error)
        if result.changed:
            logger.info(
                "FacePipeline %s/%s: created %s, updated %s, deleted %s",
                namespace,
                name,
                result.created,
                result.updated,
                result.deleted,
            )
        streams: list[dict[str, Any]] | None = None
        streams_error = None
        if read_streams:
            streams, streams_error = _read_streams(api, namespace, spec, logger)
        job_name = job["metadata"]["name"] if job is not None else None
        failure = job_failure(result.live.get(f"Job/{job_name}")) if job_name else None
        obs = Observation(
            generation=generation,
            apply_error=apply_error,
            crd_error=RUNTIME.crd_check.problem(api),
            changed=result.changed,
            components=_components(spec, result, owner),
            streams=streams,
            streams_error=streams_error,
            streams_read=read_streams,
            models=pack_status(packs, job_name, failure),
            pack_condition=pack_condition(packs, failure),
            pack_failure=f"model-pack backfill Job {job_name}: {failure}" if failure else None,
        )
        write_status(api, namespace, name, obs, previous)
        return obs


def write_status(api: KubeApi, namespace: str, name: str, obs: Observation, previous: dict[str, Any]) -> None:
    patch = status_patch(compute_status(obs, previous), previous)
    if patch:
        try:
            api.patch(FACE_PIPELINE, namespace, name, {"status": patch}, subresource="status")
        except KubeApiError as exc:
            if not exc.not_found:
                raise


# --- Kopf entry points (registered in facepipe.operator.main) ---------------------------------


def startup(settings: kopf.OperatorSettings, logger: Logger) -> None:
    runtime.configure(settings, logger)
    runtime.start_resync(lambda: resync_all(logger), logger)


def on_spec(name: str, namespace: str, uid: str, logger: Logger) -> None:
    """create / update / resume: apply the children and the status (streams are read too)."""
    RUNTIME.track(uid, namespace, name)
    reconcile(RUNTIME.require_api(), namespace, name, read_streams=True, logger=logger, expected_uid=uid)


def resync_all(logger: Logger) -> None:
    """The periodic full pass over every served FacePipeline: repairs drift, refreshes figures."""
    api = RUNTIME.require_api()
    for uid, namespace, name in RUNTIME.tracked():
        try:
            if reconcile(api, namespace, name, read_streams=True, logger=logger, expected_uid=uid) is None:
                current = api.get(FACE_PIPELINE, namespace, name)
                if current is None or current["metadata"].get("uid") != uid:
                    RUNTIME.forget(uid)
        except KubeApiError as exc:
            logger.warning("resync of %s/%s failed: %s", namespace, name, exc)


def forget(uid: str) -> None:
    RUNTIME.forget(uid)


def on_child_event(event: dict[str, Any], body: dict[str, Any], logger: Logger) -> None:
    """A managed child changed or vanished: reconcile its FacePipeline at once."""
    if event.get("type") is None:  # Kopf's initial listing; on.resume covers start-up
        return
    meta = body.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == FACE_PIPELINE.kind and ref.get("apiVersion") == FACE_PIPELINE.api_version:
            reconcile(
                RUNTIME.require_api(),
                meta.get("namespace", ""),
                ref["name"],
                read_streams=False,
                logger=logger,
                expected_uid=ref.get("uid"),
            )
