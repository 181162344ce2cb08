"""Kopf registrations only: ``kopf run -m facepipe.operator.main`` (or ``python -m facepipe.operator``).

Each handler hands over to facepipe.operator.handlers; the children are built by the
pure functions of facepipe.operator.builders.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from facepipe.operator.constants import GROUP, LABEL_MANAGED_BY, OPERATOR_NAME, PLURAL, VERSION
from facepipe.operator.handlers import deletion, pipeline, runtime
from facepipe.operator.kube import MANAGED_KINDS

Logger = logging.Logger | logging.LoggerAdapter


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: Logger, **_: Any) -> None:
    pipeline.startup(settings, logger)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    # In a pod: the service account; elsewhere: $KUBECONFIG (read now, not at import time).
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    runtime.cleanup()


@kopf.on.resume(GROUP, VERSION, PLURAL)
def resume(name: str, namespace: str, uid: str, logger: Logger, **_: Any) -> None:
    pipeline.on_spec(name, namespace, uid, logger)


@kopf.on.create(GROUP, VERSION, PLURAL)
def create(name: str, namespace: str, uid: str, logger: Logger, **_: Any) -> None:
    pipeline.on_spec(name, namespace, uid, logger)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def update(name: str, namespace: str, uid: str, logger: Logger, **_: Any) -> None:
    pipeline.on_spec(name, namespace, uid, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, when=deletion.purge_requested)
def purge(name: str, namespace: str, uid: str, body: kopf.Body, logger: Logger, **_: Any) -> None:
    deletion.on_delete_purge(name, namespace, uid, dict(body), logger)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)  # optional: no finalizer for Retain
def forget(uid: str, **_: Any) -> None:
    pipeline.forget(uid)


def _on_child_event(event: kopf.RawEvent, body: kopf.Body, logger: Logger, **_: Any) -> None:
    pipeline.on_child_event(dict(event), dict(body), logger)


for _kind in MANAGED_KINDS:
    _group, _, _version = _kind.api_version.rpartition("/")
    kopf.on.event(
        _group, _version, _kind.plural, labels={LABEL_MANAGED_BY: OPERATOR_NAME}, id=f"child-{_kind.plural}"
    )(_on_child_event)
