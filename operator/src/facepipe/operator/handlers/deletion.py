"""deletionPolicy Purge: stop the tenant's pods, then delete its data, then let the object go.

In this order because a pod still running could re-create what the purge deleted (an
embedded message in flight re-indexes its faces, an ingest entry still queued uploads its
crops again). The operator

1. deletes the pipeline's autoscalers (they would scale the Deployments back up) and a
   model-pack backfill Job (it would write vectors), and scales its Deployments to zero (the
   resync never undoes it: a FacePipeline being deleted is not reconciled);
2. waits, retrying every PURGE_POLL_SECONDS, until no Pod of the pipeline is left (on a real
   cluster that is their terminationGracePeriodSeconds: workers finish and ack their batch);
3. deletes the tenant's stream data (facepipe.operator.stream_purge) and then its vectors,
   objects and dedup keys (facepipe.store.deletion.purge_tenant, through RUNTIME's purger);
4. returns, and Kopf removes the finalizer; the garbage collector removes the children.

A failed step leaves the finalizer (Degraded, reason PurgeFailed) and is retried.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import redis

from facepipe.core.redisconn import settings_url
from facepipe.operator.apply import owned_children
from facepipe.operator.builders import stream_names
from facepipe.operator.constants import LABEL_INSTANCE, LABEL_MANAGED_BY, OPERATOR_NAME
from facepipe.operator.handlers.pipeline import SecretValueError, tenant_settings, write_status
from facepipe.operator.handlers.runtime import PURGE_POLL_SECONDS, PURGE_RETRY_SECONDS, RUNTIME
from facepipe.operator.kube import DEPLOYMENT, HPA, JOB, POD, SCALED_OBJECT, KubeApi, KubeApiError
from facepipe.operator.purge import PurgeUnavailable
from facepipe.operator.status import Observation
from facepipe.operator.stream_purge import purge_streams
from facepipe.operator.validation import SpecError, parse_spec

Logger = logging.Logger | logging.LoggerAdapter


def purge_requested(spec: dict[str, Any], **_: Any) -> bool:
    return (spec or {}).get("deletionPolicy") == "Purge"


def stop_pods(api: KubeApi, namespace: str, name: str, uid: str) -> list[str]:
    """Remove the autoscalers and a backfill Job, scale every Deployment to zero; the pods still there."""
    for kind in (HPA, SCALED_OBJECT, JOB):
        for scaler in owned_children(api, kind, namespace, name, uid):
            api.delete(kind, namespace, scaler["metadata"]["name"])
    for deployment in owned_children(api, DEPLOYMENT, namespace, name, uid):
        if (deployment.get("spec") or {}).get("replicas") != 0:
            api.patch(DEPLOYMENT, namespace, deployment["metadata"]["name"], {"spec": {"replicas": 0}})
    selector = f"{LABEL_MANAGED_BY}={OPERATOR_NAME},{LABEL_INSTANCE}={name}"
    pods = api.list(POD, namespace, selector)
    return sorted(
        pod["metadata"]["name"]
        for pod in pods
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )


def on_delete_purge(name: str, namespace: str, uid: str, body: dict[str, Any], logger: Logger) -> None:
    api = RUNTIME.require_api()
    previous = body.get("status") or {}
    generation = int(body["metadata"].get("generation", 1))

    def report(**fields: Any) -> None:
        observation = Observation(generation=generation, terminating=True, **fields)
        write_status(api, namespace, name, observation, previous)

    try:
        spec = parse_spec(name, body.get("spec"))
        running = stop_pods(api, namespace, name, uid)
        if running:
            message = (
                f"deletionPolicy Purge: stopping the tenant's pods before deleting its data "
                f"({len(running)} left: {', '.join(running[:5])})"
            )
            report(terminating_message=message)
            raise kopf.TemporaryError(message, delay=PURGE_POLL_SECONDS)
        settings = tenant_settings(api, namespace, spec)
        logger.info("purging the data of tenant %s", spec.tenantId)
        # The tenant's own streams (the default) go whole; named ones may be shared: its entries only.
        own_streams = spec.redis.streamName is None
        names = stream_names(spec).values()
        streams = purge_streams(settings_url(settings), names, spec.tenantId, whole=own_streams)
        RUNTIME.get_purger()(settings, spec.tenantId)
    except (
        SpecError,
        SecretValueError,
        PurgeUnavailable,
        KubeApiError,
        redis.RedisError,
        OSError,
        ValueError,
    ) as exc:
        if isinstance(exc, KubeApiError) and (exc.status >= 500 or exc.status == 429):
            raise  # the API server's trouble: Kopf retries with backoff
        message = (
            f"deletionPolicy Purge: the tenant's data could not be purged ({exc}); the finalizer "
            "stays until it succeeds (or set deletionPolicy: Retain to keep the data)"
        )
        report(purge_error=message)
        raise kopf.TemporaryError(message, delay=PURGE_RETRY_SECONDS) from exc
    RUNTIME.forget(uid)
    logger.info(
        "purged the data of tenant %s (%d streams, %d stream entries)",
        spec.tenantId,
        streams.streams_deleted,
        streams.entries_deleted,
    )
