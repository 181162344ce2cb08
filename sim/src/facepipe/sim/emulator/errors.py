"""The API server's error answers (Status objects), as kubectl and Kopf expect them."""

from __future__ import annotations

import kmock

Resource = kmock.resource


def conflict(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason="Conflict", message=message, details={})


def unsupported_media_type(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=415, reason="UnsupportedMediaType", message=message, details={})


def invalid(message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=422, reason="Invalid", message=message, details={})


def not_found(resource: Resource, name: str | None) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=404, reason="NotFound", message=f'{resource.plural} "{name}" not found', details={}
    )
