"""The KEDA stand-in: the redis-streams scaler against a real Redis, and the ScaledObject
controller's scale-to/from-zero decisions against the emulator.

Expected behaviour comes from kedacore/keda (pkg/scalers/redis_streams_scaler.go,
pkg/scaling/executor/scale_scaledobjects.go, controllers/keda/hpa.go) and KEDA's
documentation of the redis-streams trigger, activation and cooldownPeriod. Time is passed
explicitly to ``sync_once`` so polling and cooldown are exercised without waiting.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import redis

from facepipe.operator.kube import DEPLOYMENT, KubeApi
from facepipe.sim.keda import KedaController, KedaSettings
from facepipe.sim.keda_scalers import RedisStreamsTrigger, TriggerError, normalize_string, parse_trigger
from facepipe.sim.kubeutil import HPA, SCALED_OBJECT, SECRET, TRIGGER_AUTHENTICATION, condition_status

STREAM = "acme:images"
GROUP = "detectors"


def address(redis_url: str) -> str:
    parsed = urlparse(redis_url)
    return f"{parsed.hostname}:{parsed.port}"


def lag_trigger(redis_url: str, **extra: str) -> dict[str, Any]:
    metadata = {"address": address(redis_url), "stream": STREAM, "consumerGroup": GROUP, "lagCount": "10"}
    return {"type": "redis-streams", "metadata": {**metadata, **extra}}


# --- the scaler --------------------------------------------------------------------------------


def count(kube: KubeApi, trigger: dict[str, Any], client: redis.Redis) -> int:
    parsed = parse_trigger(kube, "default", 0, trigger)
    assert isinstance(parsed, RedisStreamsTrigger)
    return parsed.count(client)


def test_lag_of_the_consumer_group(kube: KubeApi, redis_url: str, redis_client: redis.Redis) -> None:
    trigger = lag_trigger(redis_url)
    assert count(kube, trigger, redis_client) == 0  # no stream yet
    for i in range(7):
        redis_client.xadd(STREAM, {"i": i})
    assert count(kube, trigger, redis_client) == 7  # no group yet: XLEN (scaling from zero)
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=3)
    assert count(kube, trigger, redis_client) == 4  # lag only: the 3 pending do not count


def test_lag_unknown_to_redis_is_minus_one(kube: KubeApi, redis_url: str, redis_client: redis.Redis) -> None:
    ids = [redis_client.xadd(STREAM, {"i": i}) for i in range(3)]
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xdel(STREAM, ids[1])  # a tombstone after the group's position: lag is nil
    assert count(kube, lag_trigger(redis_url), redis_client) == -1


def test_pending_and_length_factors(kube: KubeApi, redis_url: str, redis_client: redis.Redis) -> None:
    for i in range(5):
        redis_client.xadd(STREAM, {"i": i})
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    redis_client.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=2)
    pending = {
        "type": "redis-streams",
        "metadata": {"address": address(redis_url), "stream": STREAM, "consumerGroup": GROUP},
    }
    assert count(kube, pending, redis_client) == 2
    length = {"type": "redis-streams", "metadata": {"address": address(redis_url), "stream": STREAM}}
    assert count(kube, length, redis_client) == 5
    parsed = parse_trigger(kube, "default", 0, pending)
    assert isinstance(parsed, RedisStreamsTrigger)
    assert (parsed.factor, parsed.target) == ("pending", 5)  # pendingEntriesCount defaults to 5


def test_metric_spec_of_the_hpa(kube: KubeApi, redis_url: str) -> None:
    parsed = parse_trigger(kube, "default", 1, lag_trigger(redis_url))
    assert isinstance(parsed, RedisStreamsTrigger)
    assert parsed.metric_spec("embedder") == {
        "type": "External",
        "external": {
            "metric": {
                "name": "s1-redis-streams-acme-images",
                "selector": {"matchLabels": {"scaledobject.keda.sh/name": "embedder"}},
            },
            "target": {"type": "AverageValue", "averageValue": "10"},
        },
    }
    assert normalize_string("a/b.c:d%e(f)") == "a-b-c-d-e-f-"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"address": "redis:6379"}, "missing redis stream name"),
        ({"stream": "s"}, "address"),
        ({"address": "redis:6379", "stream": "s", "enableTLS": "true"}, "TLS"),
        ({"addressFromEnv": "REDIS", "stream": "s"}, "addressFromEnv"),
    ],
)
def test_triggers_it_cannot_honour_are_refused(kube: KubeApi, metadata: dict[str, str], message: str) -> None:
    with pytest.raises(TriggerError, match=message):
        parse_trigger(kube, "default", 0, {"type": "redis-streams", "metadata": metadata})
    with pytest.raises(TriggerError, match="not emulated"):
        parse_trigger(kube, "default", 0, {"type": "kafka", "metadata": {}})


def test_credentials_from_a_trigger_authentication(kube: KubeApi, namespace: str) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "redis-auth", "namespace": namespace},
        "data": {
            "pw": base64.b64encode(b"s3cret").decode(),
            "addr": base64.b64encode(b"redis.db:6380").decode(),
        },
    }
    kube.request("POST", SECRET.path(namespace), body=secret)
    auth = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": "redis", "namespace": namespace},
        "spec": {
            "secretTargetRef": [
                {"parameter": "password", "name": "redis-auth", "key": "pw"},
                {"parameter": "address", "name": "redis-auth", "key": "addr"},
            ]
        },
    }
    kube.request("POST", TRIGGER_AUTHENTICATION.path(namespace), body=auth)
    trigger = {"type": "redis-streams", "metadata": {"stream": "s", "consumerGroup": "g", "lagCount": "5"}}
    parsed = parse_trigger(kube, namespace, 0, {**trigger, "authenticationRef": {"name": "redis"}})
    assert isinstance(parsed, RedisStreamsTrigger)
    assert (parsed.host, parsed.port, parsed.password) == ("redis.db", 6380, "s3cret")


# --- the controller ----------------------------------------------------------------------------


def deployment(namespace: str, name: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
            },
        },
    }


def scaled_object(namespace: str, name: str, trigger: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"scaleTargetRef": {"name": name}, "triggers": [trigger], **spec},
    }


class Scenario:
    """One Deployment driven by one ScaledObject, with KEDA synced at chosen times."""

    def __init__(self, kube: KubeApi, namespace: str, redis_url: str, replicas: int, **spec: Any) -> None:
        self.kube, self.namespace = kube, namespace
        self.keda = KedaController(kube, settings=KedaSettings(default_polling_interval=30))
        kube.request("POST", DEPLOYMENT.path(namespace), body=deployment(namespace, "worker", replicas))
        trigger = lag_trigger(redis_url, **spec.pop("trigger_extra", {}))
        kube.request(
            "POST", SCALED_OBJECT.path(namespace), body=scaled_object(namespace, "worker", trigger, **spec)
        )
        self.start = time.time()

    def sync(self, at: float) -> int:
        self.keda.sync_once(now=self.start + at)
        obj = self.kube.get(DEPLOYMENT, self.namespace, "worker")
        assert obj is not None
        return int(obj["spec"]["replicas"])

    def status(self) -> dict[str, Any]:
        obj = self.kube.get(SCALED_OBJECT, self.namespace, "worker")
        assert obj is not None
        return obj


@pytest.fixture
def backlog(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    """Five entries waiting in the stream, the group created and nothing read."""
    for i in range(5):
        redis_client.xadd(STREAM, {"i": i})
    redis_client.xgroup_create(STREAM, GROUP, id="0")
    yield redis_client


def drain(client: redis.Redis) -> None:
    for _, entries in client.xreadgroup(GROUP, "c1", {STREAM: ">"}) or []:
        client.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])


@pytest.mark.parametrize(
    ("entries", "replicas", "spec", "expected", "active"),
    [
        (5, 0, {"minReplicaCount": 0}, 1, "True"),  # lag 5 > activationLagCount 0: to 1
        (5, 0, {"minReplicaCount": 2, "maxReplicaCount": 5}, 2, "True"),  # to max(minReplicaCount, 1)
        (
            5,
            0,
            {"minReplicaCount": 0, "trigger_extra": {"activationLagCount": "5"}},
            0,
            "False",
        ),  # 5 is not > 5
        (5, 3, {"minReplicaCount": 0}, 3, "True"),  # active above zero: the HPA's business
        (0, 0, {"minReplicaCount": 1}, 1, "False"),  # below minReplicaCount: raised even when idle
        (0, 0, {"minReplicaCount": 0}, 0, "False"),  # idle at zero stays there
    ],
)
def test_activation_table(
    kube: KubeApi,
    namespace: str,
    redis_url: str,
    redis_client: redis.Redis,
    entries: int,
    replicas: int,
    spec: dict[str, Any],
    expected: int,
    active: str,
) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(entries):
        redis_client.xadd(STREAM, {"i": i})
    scenario = Scenario(kube, namespace, redis_url, replicas, **spec)
    assert scenario.sync(0) == expected
    status = scenario.status()
    assert condition_status(status, "Active") == active
    assert status["status"]["hpaName"] == "keda-hpa-worker"
    assert bool(status["status"].get("lastActiveTime")) == (active == "True")


def test_scales_to_zero_only_after_the_cooldown(
    kube: KubeApi, namespace: str, redis_url: str, backlog: redis.Redis
) -> None:
    scenario = Scenario(
        kube, namespace, redis_url, 2, minReplicaCount=0, cooldownPeriod=60, pollingInterval=5
    )
    assert scenario.sync(0) == 2  # active: lastActiveTime = start
    drain(backlog)
    assert scenario.sync(10) == 2
    assert condition_status(scenario.status(), "Active") == "False"
    reasons = {c["type"]: c["reason"] for c in scenario.status()["status"]["conditions"]}
    assert reasons["Active"] == "ScalerCooldown"
    assert scenario.sync(58) == 2  # within 60 s of the last active poll
    assert scenario.sync(64) == 0  # the next poll after the cooldown


def pending_trigger(redis_url: str) -> dict[str, Any]:
    metadata = {"address": address(redis_url), "stream": STREAM, "consumerGroup": GROUP}
    return {"type": "redis-streams", "metadata": {**metadata, "pendingEntriesCount": "10"}}


@pytest.mark.parametrize(("with_pending", "after_cooldown"), [(False, 0), (True, 2)])
def test_entries_read_but_not_acked_keep_it_active_only_with_a_pending_trigger(
    kube: KubeApi,
    namespace: str,
    redis_url: str,
    backlog: redis.Redis,
    with_pending: bool,
    after_cooldown: int,
) -> None:
    """The operator's ScaledObject: lagCount and pendingEntriesCount on one stream and group.
    Every entry read by a consumer that has not acked it yet (lag 0, pending 5): lag alone is
    inactive and scales the worker to zero after the cooldown, with the entries in hand."""
    backlog.xreadgroup(GROUP, "c1", {STREAM: ">"})
    triggers = [lag_trigger(redis_url)] + ([pending_trigger(redis_url)] if with_pending else [])
    body = scaled_object(namespace, "worker", triggers[0], minReplicaCount=0, cooldownPeriod=60)
    body["spec"]["triggers"] = triggers
    kube.request("POST", DEPLOYMENT.path(namespace), body=deployment(namespace, "worker", 2))
    kube.request("POST", SCALED_OBJECT.path(namespace), body=body)
    keda = KedaController(kube, settings=KedaSettings(default_polling_interval=30))
    start = time.time()
    for at in (0, 31, 62, 93):
        keda.sync_once(now=start + at)
    status = kube.get(SCALED_OBJECT, namespace, "worker")
    worker = kube.get(DEPLOYMENT, namespace, "worker")
    assert status is not None and worker is not None
    assert worker["spec"]["replicas"] == after_cooldown
    assert condition_status(status, "Active") == ("True" if with_pending else "False")
    # Each trigger is a metric of KEDA's HPA, which scales on the larger proposal.
    assert status["status"]["externalMetricNames"] == [
        f"s{i}-redis-streams-acme-images" for i in range(len(triggers))
    ]
    drain_pending = backlog.xpending_range(STREAM, GROUP, min="-", max="+", count=10)
    backlog.xack(STREAM, GROUP, *[row["message_id"] for row in drain_pending])
    keda.sync_once(now=start + 124)  # inactive since 93 s: within the cooldown
    keda.sync_once(now=start + 155)
    worker = kube.get(DEPLOYMENT, namespace, "worker")
    assert worker is not None and worker["spec"]["replicas"] == 0


def test_a_pending_trigger_on_a_group_not_created_yet_is_an_error_that_never_scales_to_zero(
    kube: KubeApi, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    """XPENDING on a stream or group that does not exist is NOGROUP: a trigger error, and KEDA
    scales nothing to zero on one; the lag trigger (XLEN while the group does not exist) still
    activates the worker from zero."""
    body = scaled_object(namespace, "worker", lag_trigger(redis_url), minReplicaCount=0)
    body["spec"]["triggers"] = [lag_trigger(redis_url), pending_trigger(redis_url)]
    kube.request("POST", DEPLOYMENT.path(namespace), body=deployment(namespace, "worker", 1))
    kube.request("POST", SCALED_OBJECT.path(namespace), body=body)
    keda = KedaController(kube, settings=KedaSettings(default_polling_interval=1, default_cooldown_period=0))
    start = time.time()
    keda.sync_once(now=start)
    status = kube.get(SCALED_OBJECT, namespace, "worker")
    assert status is not None
    conditions = {c["type"]: c for c in status["status"]["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "TriggerError")
    assert "NOGROUP" in conditions["Ready"]["message"]
    assert kube.get(DEPLOYMENT, namespace, "worker")["spec"]["replicas"] == 1  # type: ignore[index]

    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)  # the worker's start
    keda.sync_once(now=start + 2)
    assert kube.get(DEPLOYMENT, namespace, "worker")["spec"]["replicas"] == 0  # type: ignore[index]
    redis_client.xgroup_destroy(STREAM, GROUP)  # lost (a Redis without persistence restarted)
    redis_client.xadd(STREAM, {"i": 1})
    keda.sync_once(now=start + 4)  # lag: XLEN 1 while the group does not exist; pending: NOGROUP
    assert kube.get(DEPLOYMENT, namespace, "worker")["spec"]["replicas"] == 1  # type: ignore[index]
    status = kube.get(SCALED_OBJECT, namespace, "worker")
    assert status is not None and condition_status(status, "Active") == "True"


def test_polling_interval_is_honoured(
    kube: KubeApi, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    redis_client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    scenario = Scenario(kube, namespace, redis_url, 0, minReplicaCount=0, pollingInterval=30)
    assert scenario.sync(0) == 0
    redis_client.xadd(STREAM, {"i": 1})
    assert scenario.sync(10) == 0  # next poll at 30 s
    assert scenario.sync(31) == 1


def test_owned_hpa_mirrors_the_scaled_object(
    kube: KubeApi, namespace: str, redis_url: str, redis_client: redis.Redis
) -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 10}}
    scenario = Scenario(
        kube,
        namespace,
        redis_url,
        1,
        minReplicaCount=0,
        maxReplicaCount=7,
        advanced={"horizontalPodAutoscalerConfig": {"behavior": behavior}},
    )
    scenario.sync(0)
    hpa = kube.get(HPA, namespace, "keda-hpa-worker")
    assert hpa is not None
    assert hpa["spec"]["minReplicas"] == 1  # KEDA does 0 <-> 1 itself
    assert hpa["spec"]["maxReplicas"] == 7
    assert hpa["spec"]["behavior"] == behavior
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "s0-redis-streams-acme-images"
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "ScaledObject"
    kube.delete(SCALED_OBJECT, namespace, "worker")  # the HPA goes with its owner
    deadline = time.monotonic() + 30
    while kube.get(HPA, namespace, "keda-hpa-worker") is not None:
        assert time.monotonic() < deadline, "the owned HPA outlived its ScaledObject"
        time.sleep(0.1)


def test_a_field_it_cannot_honour_makes_it_not_ready(
    kube: KubeApi, namespace: str, redis_url: str, backlog: redis.Redis
) -> None:
    scenario = Scenario(kube, namespace, redis_url, 0, fallback={"failureThreshold": 3, "replicas": 2})
    assert scenario.sync(0) == 0
    status = scenario.status()
    assert condition_status(status, "Ready") == "False"
    assert "fallback" in status["status"]["conditions"][0]["message"]
    assert kube.get(HPA, namespace, "keda-hpa-worker") is None


def test_an_unresolvable_address_is_a_trigger_error(
    kube: KubeApi, namespace: str, redis_url: str, backlog: redis.Redis
) -> None:
    def keda_namespace_dns(host: str, port: int, client_namespace: str) -> tuple[str, int]:
        raise LookupError(f"{host} does not resolve from namespace {client_namespace}")

    scenario = Scenario(kube, namespace, redis_url, 0, minReplicaCount=0)
    scenario.keda.resolver = keda_namespace_dns
    assert scenario.sync(0) == 0
    conditions = {c["type"]: c for c in scenario.status()["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert "does not resolve from namespace keda" in conditions["Ready"]["message"]


def test_cpu_trigger_becomes_a_resource_metric_and_is_always_active(kube: KubeApi, namespace: str) -> None:
    kube.request("POST", DEPLOYMENT.path(namespace), body=deployment(namespace, "api", 0))
    cpu = {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}}
    kube.request(
        "POST", SCALED_OBJECT.path(namespace), body=scaled_object(namespace, "api", cpu, minReplicaCount=1)
    )
    KedaController(kube).sync_once()
    hpa = kube.get(HPA, namespace, "keda-hpa-api")
    assert hpa is not None
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
        }
    ]
    scaled = kube.get(DEPLOYMENT, namespace, "api")
    assert scaled is not None and scaled["spec"]["replicas"] == 1
