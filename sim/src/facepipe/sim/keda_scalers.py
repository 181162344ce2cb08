"""KEDA's scalers for the simulation: ``redis-streams`` (read from Redis as KEDA reads it) and
``cpu`` (handed to the HPA as a Resource metric).

``redis-streams`` follows kedacore/keda pkg/scalers/redis_streams_scaler.go:

- with ``consumerGroup`` and ``lagCount``: the group's ``lag`` from ``XINFO GROUPS`` (Redis 7+;
  -1 when Redis cannot tell, 0 when the stream does not exist, the stream's ``XLEN`` while the
  group does not exist yet, since scaling from zero starts before any consumer registered);
- with ``consumerGroup`` only: ``XPENDING`` count, target ``pendingEntriesCount`` (default 5);
- without ``consumerGroup``: ``XLEN``, target ``streamLength`` (default 5);
- active when the count exceeds ``activationLagCount`` (default 0), whatever the factor;
- an error (``XPENDING`` on a stream or group that does not exist: NOGROUP) is the trigger's
  error, not a count; a ScaledObject with several triggers (one factor each) is active when
  any is, and its HPA has one External metric per trigger (it takes the largest proposal);
- the HPA metric is External ``s<i>-redis-streams-<stream>`` (``/ . : % ( )`` made ``-``),
  target type ``metricType`` (default AverageValue).

Connection settings come from the trigger's metadata and its TriggerAuthentication's
``secretTargetRef`` parameters. The address is resolved by a :data:`RedisResolver`, the way
KEDA's own pod would resolve it (its namespace's DNS search path), so the simulation can say
"that name does not resolve from KEDA" as a cluster would.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from facepipe.operator.kube import KubeApi
from facepipe.sim.kubeutil import SECRET, TRIGGER_AUTHENTICATION

RedisResolver = Callable[[str, int, str], tuple[str, int]]
"""(host, port, namespace the client runs in) -> the address to connect to; raises OSError
(or LookupError) when the name does not resolve there."""


def identity_resolver(host: str, port: int, namespace: str) -> tuple[str, int]:
    return host, port


class TriggerError(ValueError):
    """A trigger the simulation cannot honour, or whose metadata KEDA would reject."""


def normalize_string(text: str) -> str:
    """kedautil.NormalizeString."""
    return re.sub(r"[/.:%()]", "-", text)


@dataclass(frozen=True)
class RedisStreamsTrigger:
    host: str
    port: int
    database: int
    username: str | None
    password: str | None
    stream: str
    group: str
    factor: str  # "lag", "pending" or "length"
    target: int
    activation: int
    metric_type: str
    metric_name: str

    @classmethod
    def parse(cls, index: int, metadata: Mapping[str, Any], auth: Mapping[str, str]) -> RedisStreamsTrigger:
        for unsupported in (
            "addressFromEnv",
            "hostFromEnv",
            "portFromEnv",
            "passwordFromEnv",
            "usernameFromEnv",
        ):
            if unsupported in metadata:
                raise TriggerError(f"redis-streams {unsupported} is not emulated")
        if str(metadata.get("enableTLS", auth.get("tls", "false"))).lower() in ("true", "enable"):
            raise TriggerError("redis-streams over TLS is not emulated")
        address = auth.get("address") or metadata.get("address")
        if address:
            host, _, port = str(address).rpartition(":")
        else:
            host = auth.get("host") or metadata.get("host") or ""
            port = auth.get("port") or metadata.get("port") or ""
        if not host or not str(port).isdigit():
            raise TriggerError("redis-streams needs address (host:port) or host and port")
        stream = str(metadata.get("stream") or "")
        if not stream:
            raise TriggerError("missing redis stream name")
        group = str(metadata.get("consumerGroup") or "")
        lag = int(metadata.get("lagCount") or 0)
        if group and lag:
            factor, target = "lag", lag
        elif group:
            factor, target = "pending", int(metadata.get("pendingEntriesCount") or 5)
        else:
            factor, target = "length", int(metadata.get("streamLength") or 5)
        return cls(
            host=host,
            port=int(port),
            database=int(metadata.get("databaseIndex") or 0),
            username=auth.get("username") or metadata.get("username") or None,
            password=auth.get("password") or metadata.get("password") or None,
            stream=stream,
            group=group,
            factor=factor,
            target=target,
            activation=int(metadata.get("activationLagCount") or 0),
            metric_type=str(metadata.get("metricType") or "AverageValue"),
            metric_name=f"s{index}-redis-streams-{normalize_string(stream)}",
        )

    def metric_spec(self, scaled_object: str) -> dict[str, Any]:
        """GetMetricSpecForScaling: the External metric of KEDA's HPA."""
        target_key = "averageValue" if self.metric_type == "AverageValue" else "value"
        return {
            "type": "External",
            "external": {
                "metric": {
                    "name": self.metric_name,
                    "selector": {"matchLabels": {"scaledobject.keda.sh/name": scaled_object}},
                },
                "target": {"type": self.metric_type, target_key: str(self.target)},
            },
        }

    def count(self, client: redis.Redis) -> int:
        """getEntriesCountFn for the trigger's scale factor."""
        if self.factor == "pending":
            return int(client.xpending(self.stream, self.group)["pending"])
        if self.factor == "length":
            return int(client.xlen(self.stream))
        major = int(str(client.info("server")["redis_version"]).split(".")[0])
        if major < 7:
            raise TriggerError("redis version 7+ required for lag")
        try:
            groups = client.xinfo_groups(self.stream)
        except redis.ResponseError as exc:
            if "no such key" in str(exc):
                return 0
            raise
        for group in groups:
            name = group["name"].decode() if isinstance(group["name"], bytes) else group["name"]
            if name == self.group:
                return -1 if group.get("lag") is None else int(group["lag"])
        return int(client.xlen(self.stream))


@dataclass(frozen=True)
class CpuTrigger:
    metric_type: str
    value: int

    def metric_spec(self) -> dict[str, Any]:
        """KEDA's cpu scaler: a Resource metric the HPA evaluates itself (always "active")."""
        if self.metric_type == "Utilization":
            target = {"type": "Utilization", "averageUtilization": self.value}
        else:
            target = {"type": "AverageValue", "averageValue": str(self.value)}
        return {"type": "Resource", "resource": {"name": "cpu", "target": target}}


Trigger = RedisStreamsTrigger | CpuTrigger


def trigger_auth(kube: KubeApi, namespace: str, trigger: Mapping[str, Any]) -> dict[str, str]:
    """The parameters of the trigger's TriggerAuthentication (secretTargetRef only)."""
    ref = trigger.get("authenticationRef") or {}
    if not ref:
        return {}
    if ref.get("kind", "TriggerAuthentication") != "TriggerAuthentication":
        raise TriggerError(f"authenticationRef kind {ref.get('kind')} is not emulated")
    auth = kube.get(TRIGGER_AUTHENTICATION, namespace, str(ref["name"]))
    if auth is None:
        raise TriggerError(f'TriggerAuthentication "{ref["name"]}" not found')
    spec = auth.get("spec") or {}
    others = sorted(set(spec) - {"secretTargetRef"})
    if others:
        raise TriggerError(f"TriggerAuthentication {ref['name']}: {', '.join(others)} not emulated")
    params: dict[str, str] = {}
    for item in spec.get("secretTargetRef") or []:
        secret = kube.get(SECRET, namespace, str(item["name"]))
        data = (secret or {}).get("data") or {}
        if item["key"] not in data:
            raise TriggerError(f"secret {item['name']} has no key {item['key']}")
        params[str(item["parameter"])] = base64.b64decode(data[item["key"]]).decode()
    return params


def parse_trigger(kube: KubeApi, namespace: str, index: int, trigger: Mapping[str, Any]) -> Trigger:
    kind = trigger.get("type")
    metadata = trigger.get("metadata") or {}
    if kind == "redis-streams":
        return RedisStreamsTrigger.parse(index, metadata, trigger_auth(kube, namespace, trigger))
    if kind == "cpu":
        metric_type = str(trigger.get("metricType") or metadata.get("type") or "Utilization")
        return CpuTrigger(metric_type, int(metadata["value"]))
    raise TriggerError(f"trigger type {kind!r} is not emulated (redis-streams and cpu are)")
