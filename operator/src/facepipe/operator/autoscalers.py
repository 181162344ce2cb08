"""Per autoscaled component an HPA (External metric facepipe_stream_backlog, or CPU for ops-api)
or a KEDA ScaledObject, never both.

The ScaledObject has two redis-streams triggers on the component's input stream and group (the
redis-cluster-streams scaler on a Redis Cluster): ``lagCount`` and ``pendingEntriesCount``, since
KEDA's scaler counts one of them per trigger, and the backlog is both (what the HPA's
facepipe_stream_backlog adds up). KEDA is active while either count is above 0, and its HPA
takes the larger proposal. With lag alone, entries read but not yet acked (batches in hand, a
killed consumer's entries waiting to be reclaimed) did not count: a worker whose whole backlog
was pending looked idle. Until the worker has created its group, XPENDING answers NOGROUP, a
trigger error on which KEDA scales nothing to zero.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from facepipe.core.redisconn import is_cluster_url, seed_nodes
from facepipe.operator.constants import BACKLOG_METRIC, INPUT_ROLE, Component
from facepipe.operator.environment import stream_names
from facepipe.operator.objects import (
    Manifest,
    PipelineRef,
    child_name,
    component_labels,
    component_spec,
    metadata,
)
from facepipe.operator.spec import PipelineSpec


def keda_redis_address(url: str, *, cluster: bool = False) -> dict[str, str]:
    """KEDA trigger metadata for a password-less redis:// or rediss:// URL: ``address`` (and
    ``databaseIndex``) for the redis-streams trigger, or, for a Redis Cluster (``cluster`` or a
    redis+cluster:// URL), ``addresses`` (every seed node) for the redis-cluster-streams trigger."""
    cluster = cluster or is_cluster_url(url)
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        raise ValueError(f"KEDA needs a TCP Redis address, not a {parsed.scheme}:// URL")
    if parsed.password or parsed.username:
        raise ValueError("redis.url holds credentials; give KEDA them by redis.kedaAuthenticationRef")
    nodes = seed_nodes(url)
    if not parsed.netloc or not nodes:
        raise ValueError("redis.url has no host")
    metadata = {}
    if cluster:
        metadata["addresses"] = ",".join(f"{host}:{port}" for host, port in nodes)
    else:
        metadata["address"] = f"{parsed.hostname}:{parsed.port or 6379}"
        database = parsed.path.strip("/")
        if database:
            if not database.isdigit():
                raise ValueError(f"redis.url database {database!r} is not a number")
            metadata["databaseIndex"] = database
    if parsed.scheme.startswith("rediss"):
        metadata["enableTLS"] = "true"
    return metadata


def keda_trigger_type(spec: PipelineSpec) -> str:
    """KEDA's scaler: its cluster variant when the CR says the Redis is a Redis Cluster."""
    return "redis-cluster-streams" if spec.redis.is_cluster else "redis-streams"


def _scale_target(owner: PipelineRef, component: Component) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": child_name(owner, component)}


def build_hpa(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest:
    meta = metadata(owner, child_name(owner, component), component_labels(owner, spec, component))
    if component == "ops-api":
        scaling = spec.components.opsApi.autoscaling
        metrics = [
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": scaling.targetCPUUtilizationPercentage,
                    },
                },
            }
        ]
        bounds = (scaling.minReplicas, scaling.maxReplicas)
    else:
        worker = spec.worker(component).autoscaling
        # Backlog = consumer-group lag + pending of the component's input stream (docs/design.md).
        # Stream names hold ':' which label values cannot, so the metric is selected by role.
        metrics = [
            {
                "type": "External",
                "external": {
                    "metric": {
                        "name": BACKLOG_METRIC,
                        "selector": {
                            "matchLabels": {"stream_role": INPUT_ROLE[component], "tenant": spec.tenantId}
                        },
                    },
                    "target": {"type": "AverageValue", "averageValue": str(worker.targetLagPerReplica)},
                },
            }
        ]
        bounds = (worker.minReplicas, worker.maxReplicas)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": _scale_target(owner, component),
            "minReplicas": bounds[0],
            "maxReplicas": bounds[1],
            "metrics": metrics,
        },
    }


def _stream_trigger(spec: PipelineSpec, component: Component, count: str, target: int) -> dict[str, Any]:
    """One redis-streams trigger on the component's input stream and group, counting ``count``:
    ``lagCount`` (entries no consumer has read yet) or ``pendingEntriesCount`` (read, not yet
    acked). KEDA's scaler counts one of them per trigger; the backlog is both."""
    trigger_metadata = {
        "stream": stream_names(spec)[INPUT_ROLE[component]],
        "consumerGroup": spec.redis.groupName,
        count: str(target),
    }
    trigger: dict[str, Any] = {"type": keda_trigger_type(spec), "metadata": trigger_metadata}
    if spec.redis.kedaAuthenticationRef:
        trigger["authenticationRef"] = {"name": spec.redis.kedaAuthenticationRef}
    else:
        assert spec.redis.url is not None  # parse_spec guarantees it
        trigger_metadata.update(keda_redis_address(spec.redis.url, cluster=spec.redis.is_cluster))
    return trigger


def build_scaled_object(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest:
    meta = metadata(owner, child_name(owner, component), component_labels(owner, spec, component))
    if component == "ops-api":
        scaling = spec.components.opsApi.autoscaling
        triggers: list[dict[str, Any]] = [
            {
                "type": "cpu",
                "metricType": "Utilization",
                "metadata": {"value": str(scaling.targetCPUUtilizationPercentage)},
            }
        ]
        bounds = (scaling.minReplicas, scaling.maxReplicas)
    else:
        worker = spec.worker(component).autoscaling
        triggers = [
            _stream_trigger(spec, component, "lagCount", worker.targetLagPerReplica),
            _stream_trigger(spec, component, "pendingEntriesCount", worker.targetLagPerReplica),
        ]
        bounds = (worker.minReplicas, worker.maxReplicas)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": {
            "scaleTargetRef": {"name": child_name(owner, component)},
            "minReplicaCount": bounds[0],
            "maxReplicaCount": bounds[1],
            "triggers": triggers,
        },
    }


def build_autoscaler(owner: PipelineRef, spec: PipelineSpec, component: Component) -> Manifest | None:
    """An HPA or a KEDA ScaledObject (never both), or None when autoscaling is off."""
    scaling = component_spec(spec, component).autoscaling
    if not scaling.enabled:
        return None
    if scaling.provider == "keda":
        return build_scaled_object(owner, spec, component)
    return build_hpa(owner, spec, component)
