"""A KEDA stand-in for keda.sh/v1alpha1 ScaledObjects, as keda-operator and its metrics server.

What a cluster shows, reproduced (controllers/keda/hpa.go, pkg/scaling/executor):

- each ScaledObject owns an HPA ``keda-hpa-<name>`` (or advanced.horizontalPodAutoscalerConfig
  .name) with ``minReplicas`` = max(minReplicaCount, 1), ``maxReplicas`` = maxReplicaCount
  (default 100), the triggers' metrics and advanced...behavior; the HPA controller scales
  1..N on it, reading the External metric from :meth:`KedaController.external_values`
  (KEDA's metrics server: the scaler is asked at request time);
- every ``pollingInterval`` (30 s) the triggers are polled: active when any is; active at 0
  replicas -> scaled to max(minReplicaCount, 1); inactive with minReplicaCount 0 (or
  idleReplicaCount) -> scaled to it once ``cooldownPeriod`` (300 s) has passed since the last
  active poll (``initialCooldownPeriod`` after creation when never active); below
  minReplicaCount -> raised to it;
- status: conditions Ready / Active, hpaName, lastActiveTime, externalMetricNames,
  scaleTargetKind.

Fields whose behaviour is not reproduced (fallback, scalingModifiers, pause annotations,
trigger types other than redis-streams and cpu) make the ScaledObject Ready=False with the
reason, and nothing is scaled for it -- never a silent approximation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from facepipe.operator.kube import KubeApi, KubeApiError
from facepipe.sim.controller import PeriodicController
from facepipe.sim.hpa import record_event, write_status
from facepipe.sim.keda_scalers import (
    CpuTrigger,
    RedisResolver,
    RedisStreamsTrigger,
    Trigger,
    TriggerError,
    identity_resolver,
    parse_trigger,
)
from facepipe.sim.kubeutil import HPA, SCALED_OBJECT, LabelSelector, now_rfc3339, parse_time, set_condition
from facepipe.sim.scale import ScaleClient, ScaleError, target_kind

log = logging.getLogger(__name__)

SCALED_OBJECT_LABEL = "scaledobject.keda.sh/name"
_NOT_EMULATED_SPEC = ("fallback",)
_NOT_EMULATED_ADVANCED = ("scalingModifiers",)
_PAUSE_ANNOTATIONS = (
    "autoscaling.keda.sh/paused",
    "autoscaling.keda.sh/paused-replicas",
    "autoscaling.keda.sh/paused-scale-in",
    "autoscaling.keda.sh/paused-scale-out",
)


@dataclass(frozen=True)
class KedaSettings:
    """``namespace``: where keda-operator runs (names in triggers resolve from there)."""

    namespace: str = "keda"
    loop_interval: float = 1.0
    default_polling_interval: float = 30.0
    default_cooldown_period: float = 300.0


@dataclass
class _State:
    next_poll: float = 0.0


class KedaController(PeriodicController):
    thread_name = "sim-keda"

    def __init__(
        self, kube: KubeApi, resolver: RedisResolver = identity_resolver, settings: KedaSettings | None = None
    ) -> None:
        self.settings = settings or KedaSettings()
        super().__init__(self.settings.loop_interval)
        self.kube = kube
        self.resolver = resolver
        self.scales = ScaleClient(kube)
        self._state: dict[str, _State] = {}
        self._clients: dict[tuple[Any, ...], redis.Redis] = {}

    def stop(self) -> None:
        super().stop()
        for client in self._clients.values():
            client.close()

    # -- the metrics server --

    def external_values(self, namespace: str, metric: str, selector: LabelSelector) -> list[int]:
        """KEDA's external metrics API: the named trigger's count now, in thousandths."""
        owner = next((t.values[0] for t in selector.requirements if t.key == SCALED_OBJECT_LABEL), None)
        if owner is None:
            raise LookupError(f"{metric}: the selector names no ScaledObject")
        scaled_object = self.kube.get(SCALED_OBJECT, namespace, owner)
        if scaled_object is None:
            raise LookupError(f'ScaledObject "{owner}" not found')
        for trigger in self._triggers(scaled_object):
            if isinstance(trigger, RedisStreamsTrigger) and trigger.metric_name == metric:
                return [self._count(trigger) * 1000]
        raise LookupError(f"no metric {metric} on ScaledObject {owner}")

    def _client(self, trigger: RedisStreamsTrigger) -> redis.Redis:
        host, port = self.resolver(trigger.host, trigger.port, self.settings.namespace)
        key = (host, port, trigger.database, trigger.username, trigger.password)
        if key not in self._clients:
            self._clients[key] = redis.Redis(
                host=host,
                port=port,
                db=trigger.database,
                username=trigger.username,
                password=trigger.password,
                socket_timeout=5,
                socket_connect_timeout=5,
                decode_responses=True,
            )
        return self._clients[key]

    def _count(self, trigger: RedisStreamsTrigger) -> int:
        return trigger.count(self._client(trigger))

    def _triggers(self, scaled_object: Mapping[str, Any]) -> list[Trigger]:
        namespace = scaled_object["metadata"]["namespace"]
        triggers = (scaled_object.get("spec") or {}).get("triggers") or []
        if not triggers:
            raise TriggerError("no triggers defined in the ScaledObject")
        return [parse_trigger(self.kube, namespace, i, t) for i, t in enumerate(triggers)]

    # -- reconcile --

    def sync_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        seen = set()
        for scaled_object in self.kube.list(SCALED_OBJECT, None):
            meta = scaled_object["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            seen.add(key)
            if meta.get("deletionTimestamp"):
                continue
            try:
                self.reconcile(scaled_object, self._state.setdefault(key, _State()), now)
            except KubeApiError as exc:  # a conflict or a vanished object: the next pass retries
                log.warning("ScaledObject %s: %s", key, exc)
            except Exception:  # one malformed ScaledObject must not stop the others
                log.exception("ScaledObject %s could not be reconciled", key)
        for key in set(self._state) - seen:
            del self._state[key]

    def reconcile(self, scaled_object: dict[str, Any], state: _State, now: float) -> None:
        spec = scaled_object.get("spec") or {}
        status = dict(scaled_object.get("status") or {})
        conditions = [dict(c) for c in status.get("conditions") or []]
        try:
            self._check_emulated(scaled_object)
            triggers = self._triggers(scaled_object)
            kind = target_kind(
                {"apiVersion": "apps/v1", "kind": "Deployment", **(spec.get("scaleTargetRef") or {})}
            )
        except (TriggerError, ScaleError, KeyError, ValueError) as exc:
            set_condition(conditions, "Ready", "False", "ScaledObjectCheckFailed", str(exc))
            self._write_status(scaled_object, {**status, "conditions": conditions})
            return
        hpa_name = self._ensure_hpa(scaled_object, triggers)
        status.update(
            hpaName=hpa_name,
            scaleTargetKind=f"apps/v1.{kind.kind}",
            externalMetricNames=[t.metric_name for t in triggers if isinstance(t, RedisStreamsTrigger)]
            or None,
        )
        if now >= state.next_poll:
            state.next_poll = now + float(
                spec.get("pollingInterval") or self.settings.default_polling_interval
            )
            self._poll(scaled_object, triggers, status, conditions, now)
        self._write_status(scaled_object, {**status, "conditions": conditions})

    def _check_emulated(self, scaled_object: Mapping[str, Any]) -> None:
        spec = scaled_object.get("spec") or {}
        advanced = spec.get("advanced") or {}
        annotations = scaled_object["metadata"].get("annotations") or {}
        refused = [f for f in _NOT_EMULATED_SPEC if spec.get(f)]
        refused += [f"advanced.{f}" for f in _NOT_EMULATED_ADVANCED if advanced.get(f)]
        refused += [a for a in _PAUSE_ANNOTATIONS if a in annotations]
        if refused:
            raise TriggerError(f"{', '.join(refused)}: not emulated by the simulation's KEDA")

    def _poll(
        self,
        scaled_object: dict[str, Any],
        triggers: list[Trigger],
        status: dict[str, Any],
        conditions: list[dict[str, Any]],
        now: float,
    ) -> None:
        """One pollingInterval tick: trigger activity, then RequestScale."""
        spec = scaled_object.get("spec") or {}
        active, errors = False, []
        for trigger in triggers:
            if isinstance(trigger, CpuTrigger):
                active = True  # cpu/memory scalers are always active
                continue
            try:
                active |= self._count(trigger) > trigger.activation
            except (redis.RedisError, OSError, LookupError, TriggerError) as exc:
                errors.append(f"{trigger.metric_name}: {exc}")
        ref = {"apiVersion": "apps/v1", "kind": "Deployment", **(spec.get("scaleTargetRef") or {})}
        namespace = scaled_object["metadata"]["namespace"]
        try:
            scale = self.scales.get(namespace, ref)
        except ScaleError as exc:
            set_condition(conditions, "Ready", "False", "ErrorGettingCurrentReplicas", str(exc))
            return
        set_condition(
            conditions,
            "Ready",
            "True",
            "ScaledObjectReady",
            "ScaledObject is defined correctly and is ready for scaling",
        )
        minimum = int(spec.get("minReplicaCount") or 0)
        idle = spec.get("idleReplicaCount")
        current = scale.spec_replicas
        if active:
            set_condition(
                conditions,
                "Active",
                "True",
                "ScalerActive",
                "Scaling is performed because triggers are active",
            )
            if (idle is not None and current < minimum) or current == 0:
                replicas = max(minimum, 1)
                self._scale(scaled_object, scale, replicas, "KEDAScaleTargetActivated")
                status["lastActiveTime"] = now_rfc3339(now)
            elif errors:
                set_condition(conditions, "Ready", "Unknown", "PartialTriggerError", "; ".join(errors))
            else:
                status["lastActiveTime"] = now_rfc3339(now)
            return
        set_condition(
            conditions,
            "Active",
            "False",
            "ScalerNotActive",
            "Scaling is not performed because triggers are not active",
        )
        if errors:
            set_condition(conditions, "Ready", "False", "TriggerError", "; ".join(errors))
        elif (idle is not None and current > int(idle)) or (current > 0 and minimum == 0):
            if self._cooled_down(scaled_object, now):
                target = int(idle) if idle is not None else minimum
                self._scale(scaled_object, scale, target, "KEDAScaleTargetDeactivated")
            else:
                set_condition(
                    conditions,
                    "Active",
                    "False",
                    "ScalerCooldown",
                    "Scaler cooling down because triggers are not active",
                )
        elif idle is None and current < minimum:
            self._scale(scaled_object, scale, minimum, "KEDAScaleTargetActivated")

    def _cooled_down(self, scaled_object: Mapping[str, Any], now: float) -> bool:
        spec = scaled_object.get("spec") or {}
        last_active = parse_time((scaled_object.get("status") or {}).get("lastActiveTime"))
        if last_active is None:
            created = parse_time(scaled_object["metadata"].get("creationTimestamp"))
            initial = float(spec.get("initialCooldownPeriod") or 0)
            return created is None or created.timestamp() + initial < now
        cooldown = spec.get("cooldownPeriod")
        cooldown = self.settings.default_cooldown_period if cooldown is None else float(cooldown)
        return last_active.timestamp() + cooldown < now

    def _scale(self, scaled_object: Mapping[str, Any], scale: Any, replicas: int, reason: str) -> None:
        try:
            self.scales.update(scale, replicas)
        except ScaleError as exc:
            log.warning("ScaledObject %s: %s", scaled_object["metadata"]["name"], exc)
            return
        target = f"apps/v1.{scale.kind.kind} {scale.namespace}/{scale.name}"
        message = f"Scaled {target} from {scale.spec_replicas} to {replicas}"
        record_event(self.kube, scaled_object, reason, message, component="keda-operator")
        log.info("ScaledObject %s/%s: %s", scale.namespace, scaled_object["metadata"]["name"], message)

    # -- owned HPA and status --

    def _ensure_hpa(self, scaled_object: Mapping[str, Any], triggers: list[Trigger]) -> str:
        meta, spec = scaled_object["metadata"], scaled_object.get("spec") or {}
        advanced = (spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}
        name = advanced.get("name") or f"keda-hpa-{meta['name']}"
        metrics = [
            t.metric_spec(meta["name"]) if isinstance(t, RedisStreamsTrigger) else t.metric_spec()
            for t in triggers
        ]
        minimum = int(spec.get("minReplicaCount") or 0)
        hpa_spec: dict[str, Any] = {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                **(spec.get("scaleTargetRef") or {}),
            },
            "minReplicas": minimum if minimum > 0 else 1,
            "maxReplicas": int(spec.get("maxReplicaCount") or 100),
            "metrics": metrics,
        }
        if advanced.get("behavior"):
            hpa_spec["behavior"] = advanced["behavior"]
        labels = {
            **(meta.get("labels") or {}),
            "app.kubernetes.io/name": name,
            "app.kubernetes.io/part-of": meta["name"],
            "app.kubernetes.io/managed-by": "keda-operator",
            SCALED_OBJECT_LABEL: meta["name"],
        }
        existing = self.kube.get(HPA, meta["namespace"], name)
        if existing is None:
            owner = {
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
            body = {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {
                    "name": name,
                    "namespace": meta["namespace"],
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": hpa_spec,
            }
            self.kube.request("POST", HPA.path(meta["namespace"]), body=body)
        elif existing.get("spec") != hpa_spec or (existing["metadata"].get("labels") or {}) != labels:
            # A replace, so that removed fields (a behavior taken out) go; no resourceVersion, so
            # the HPA controller's status writes in between do not make it conflict.
            metadata = {k: v for k, v in existing["metadata"].items() if k != "resourceVersion"}
            body = {**existing, "spec": hpa_spec, "metadata": {**metadata, "labels": labels}}
            self.kube.request("PUT", HPA.path(meta["namespace"], name), body=body)
        return str(name)

    def _write_status(self, scaled_object: Mapping[str, Any], status: dict[str, Any]) -> None:
        write_status(self.kube, SCALED_OBJECT, scaled_object, status)
