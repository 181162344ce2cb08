"""A raw FacePipeline spec in, a typed one out, or every problem with it: :func:`parse_spec`.

The schema's checks (pydantic, the same as the CRD's) come first; then the ones a schema
cannot express: names the children derive from the metadata, one Redis address, autoscaling
bounds and providers, KEDA's view of the Redis URL (facepipe.operator.autoscalers), and the
settings in spec.settings / components.*.settings against the table of who reads what
(facepipe.operator.envmap) with the environment each component would see
(facepipe.operator.environment). Every problem becomes one readable line that the operator
puts into the Degraded condition. It sits above the builders' modules, which it uses, and
below everything that handles a raw spec (claims, the handlers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from facepipe.core.packs import PACKS
from facepipe.core.redisconn import hash_tag
from facepipe.core.settings import Settings
from facepipe.core.tenancy import is_valid_tenant_id
from facepipe.operator.autoscalers import keda_redis_address
from facepipe.operator.constants import COMPONENTS, Component
from facepipe.operator.environment import component_literal_env, shared_env
from facepipe.operator.envmap import (
    MANAGED,
    READERS,
    component_may_set,
    legacy_aliases,
    primary_env_names,
    reads,
)
from facepipe.operator.spec import PipelineSpec


class SpecError(ValueError):
    """The spec cannot be reconciled; ``problems`` are one line each, naming the field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# Service names are <name>-ops-api / <name>-workers: DNS-1035 labels of at most 63 characters.
_NAME_PATTERN = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME_LENGTH = 50
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _describe(error: Mapping[str, Any]) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return f"spec.{loc}: {message}" if loc else f"spec: {message}"


def parse_spec(name: str, raw_spec: Mapping[str, Any] | None) -> PipelineSpec:
    """Typed spec with defaults, or :class:`SpecError` listing every problem found."""
    problems: list[str] = []
    if not _NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        problems.append(
            f"metadata.name {name!r}: must be a DNS-1035 label (a-z, 0-9, '-', starting with a letter) "
            f"of at most {MAX_NAME_LENGTH} characters, because child Services are named after it"
        )
    try:
        spec = PipelineSpec.model_validate(dict(raw_spec or {}))
    except ValidationError as exc:
        raise SpecError(problems + [_describe(err) for err in exc.errors()]) from None
    problems += _semantic_problems(spec)
    if problems:
        raise SpecError(problems)
    return spec


def _semantic_problems(spec: PipelineSpec) -> list[str]:
    problems: list[str] = []
    if not is_valid_tenant_id(spec.tenantId) or not _LABEL_VALUE.fullmatch(spec.tenantId):
        # Everything else derives names from the tenant (labels, the stream): stop here.
        return [
            f"spec.tenantId {spec.tenantId!r}: 1-63 characters of A-Z a-z 0-9 _ . -, starting and "
            "ending with a letter or digit, without '..'"
        ]
    if (spec.redis.url is None) == (spec.redis.urlSecretRef is None):
        problems.append("spec.redis: give exactly one of url and urlSecretRef")
    named = spec.redis.streamName
    if spec.redis.is_cluster and named is not None and hash_tag(named) != spec.tenantId:
        tag = "{" + spec.tenantId + "}"
        problems.append(
            f"spec.redis.streamName {named!r}: on a Redis Cluster a tenant's streams carry its hash tag "
            f"{tag} (or leave streamName out: face-processing-queue:{tag})"
        )
    for key, worker in (
        ("detector", spec.components.detector),
        ("embedder", spec.components.embedder),
        ("indexer", spec.components.indexer),
    ):
        scaling = worker.autoscaling
        if not scaling.enabled:
            continue
        where = f"spec.components.{key}.autoscaling"
        if scaling.minReplicas > scaling.maxReplicas:
            problems.append(
                f"{where}: minReplicas {scaling.minReplicas} exceeds maxReplicas {scaling.maxReplicas}"
            )
        if scaling.provider == "hpa" and scaling.minReplicas < 1:
            problems.append(f"{where}: minReplicas 0 needs provider keda (an HPA keeps at least one replica)")
        if scaling.provider == "keda":
            problems += _keda_redis_problems(spec, where)
    problems += _mixed_provider_problems(spec)
    ops = spec.components.opsApi
    if ops.autoscaling.enabled:
        where = "spec.components.opsApi.autoscaling"
        if ops.autoscaling.minReplicas > ops.autoscaling.maxReplicas:
            problems.append(
                f"{where}: minReplicas {ops.autoscaling.minReplicas} exceeds maxReplicas "
                f"{ops.autoscaling.maxReplicas}"
            )
        if "cpu" not in ops.resources.requests:
            problems.append(
                "spec.components.opsApi.resources.requests.cpu: required when opsApi autoscaling is "
                "enabled (it scales on CPU utilisation of the request)"
            )
    pack = PACKS[spec.models.pack]
    if not pack.fetchable and not spec.models.volume.claimName:
        problems.append(
            f"spec.models.pack {pack.name}: its weights cannot be downloaded by the pods; fill a "
            "PersistentVolumeClaim with them and name it in spec.models.volume.claimName (or use "
            "buffalo_sc or opencv_yunet_sface, which the pods fetch themselves)"
        )
    if spec.restartAt is not None and not spec.restartAt.strip():
        problems.append("spec.restartAt: must not be blank (remove the field instead)")
    problems += settings_problems(spec)
    return problems


MIXED_PROVIDERS = (
    "autoscaling.provider: the workers use both hpa ({hpa}) and keda ({keda}). The HPAs read their "
    "External metric from prometheus-adapter and KEDA serves its own, through the same Kubernetes API "
    "(external.metrics.k8s.io), which a cluster gives to one of them: use one provider for every worker"
)


def _mixed_provider_problems(spec: PipelineSpec) -> list[str]:
    """Workers autoscaled by HPAs on the adapter's metric and by KEDA cannot both work in one cluster."""
    by_provider: dict[str, list[str]] = {"hpa": [], "keda": []}
    for key in ("detector", "embedder", "indexer"):
        scaling = spec.worker(key).autoscaling
        if scaling.enabled:
            by_provider[scaling.provider].append(key)
    if by_provider["hpa"] and by_provider["keda"]:
        return [
            "spec.components."
            + MIXED_PROVIDERS.format(hpa=", ".join(by_provider["hpa"]), keda=", ".join(by_provider["keda"]))
        ]
    return []


def _keda_redis_problems(spec: PipelineSpec, where: str) -> list[str]:
    if spec.redis.kedaAuthenticationRef:
        return []
    if spec.redis.url is None:
        return [
            f"{where}: provider keda with redis.urlSecretRef needs redis.kedaAuthenticationRef "
            "(a TriggerAuthentication giving KEDA the address and password)"
        ]
    try:
        keda_redis_address(spec.redis.url, cluster=spec.redis.is_cluster)
    except ValueError as exc:
        return [f"{where}: {exc}"]
    return []


def settings_problems(spec: PipelineSpec) -> list[str]:
    """Unknown or spec-owned names in spec.settings / components.*.settings, and invalid values."""
    known = set(primary_env_names())
    aliases = legacy_aliases()
    problems: list[str] = []
    sources = {"spec.settings": spec.settings}
    for component in COMPONENTS:
        key = "opsApi" if component == "ops-api" else component
        sources[f"spec.components.{key}.settings"] = _component_settings(spec, component)
    for where, values in sources.items():
        for name in values:
            if name in aliases:
                problems.append(f"{where}.{name}: a legacy alias; use {aliases[name]}")
            elif name not in known:
                problems.append(f"{where}.{name}: not a setting of the services")
            elif name in MANAGED:
                problems.append(f"{where}.{name}: set by {MANAGED[name]}")
    for component in COMPONENTS:
        key = "opsApi" if component == "ops-api" else component
        for name in _component_settings(spec, component):
            if name not in known or name in MANAGED or name in aliases:
                continue  # reported above
            if not reads(component, name):
                problems.append(f"spec.components.{key}.settings.{name}: the {component} does not read it")
            elif not component_may_set(component, name):
                readers = ", ".join(c for c in COMPONENTS if c in READERS[name])
                problems.append(
                    f"spec.components.{key}.settings.{name}: {readers} read it and must agree on it; "
                    "set it once in spec.settings"
                )
    if problems:
        return problems
    # Validate what each component would really see, with the services' own rules.
    shared = shared_env(spec)
    for component in COMPONENTS:
        env = {name: value for name, value in shared.items() if reads(component, name)}
        env.update(component_literal_env(spec, component))
        env.setdefault("REDIS_URL", "redis://from-secret:6379/0")  # the value sits in a Secret
        problems += [f"{component}: {line}" for line in _invalid_values(env)]
    return sorted(set(problems))


def _component_settings(spec: PipelineSpec, component: Component) -> Mapping[str, str]:
    if component == "ops-api":
        return spec.components.opsApi.settings
    return spec.worker(component).settings


def _invalid_values(env: Mapping[str, str]) -> list[str]:
    try:
        # model_validate reads only `env`, never the operator's own environment.
        Settings.model_validate(dict(env))
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            if not error["loc"]:  # a check of several settings together names them itself
                lines.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            name = str(error["loc"][0])
            lines.append(f"{name}={error.get('input')!r} is invalid: {error['msg']}")
        return lines
    return []
