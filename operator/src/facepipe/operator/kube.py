"""A small synchronous client for the few kinds the operator manages.

Built on the ``kubernetes`` package only for its configuration (kubeconfig or
in-cluster credentials, TLS, token refresh); requests are plain JSON: server-side apply
patches, merge patches and JSON patches, so one code path serves built-in kinds and
KEDA's custom kinds alike.
Kopf runs the operator's sync handlers in worker threads, where this blocks fine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import kubernetes


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
        return base


CONFIG_MAP = Kind("v1", "ConfigMap", "configmaps")
SECRET = Kind("v1", "Secret", "secrets")
SERVICE = Kind("v1", "Service", "services")
DEPLOYMENT = Kind("apps/v1", "Deployment", "deployments")
JOB = Kind("batch/v1", "Job", "jobs")
HPA = Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SCALED_OBJECT = Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects")
FACE_PIPELINE = Kind("facepipe.io/v1alpha1", "FacePipeline", "facepipelines")
POD = Kind("v1", "Pod", "pods")
CRD = Kind(
    "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False
)

# Every kind the operator creates, in the order children are applied.
MANAGED_KINDS: tuple[Kind, ...] = (CONFIG_MAP, DEPLOYMENT, SERVICE, HPA, SCALED_OBJECT, JOB)
_BY_KIND = {(k.api_version, k.kind): k for k in (*MANAGED_KINDS, SECRET, FACE_PIPELINE, POD, CRD)}


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    return _BY_KIND[(manifest["apiVersion"], manifest["kind"])]


class KubeApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class KubeApi:
    """get / list / create / server-side apply / merge-patch / JSON-patch / delete of JSON objects."""

    def __init__(self, api_client: kubernetes.client.ApiClient, *, timeout_s: float = 30.0) -> None:
        self._client = api_client
        self._timeout_s = timeout_s
        self.writes = 0  # create/patch/delete calls made (tests check that a no-op pass makes none)

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeApi:
        """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
        configuration = kubernetes.client.Configuration()
        try:
            if kubeconfig:
                raise kubernetes.config.ConfigException("a kubeconfig was given")
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            # $KUBECONFIG read now: the kubernetes package reads it once, at its own import.
            kubernetes.config.load_kube_config(
                config_file=kubeconfig or os.environ.get("KUBECONFIG"), client_configuration=configuration
            )
        return cls(kubernetes.client.ApiClient(configuration))

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, post = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()) or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._client.call_api(method, url, headers, body, post, _request_timeout=self._timeout_s)
        data = response.read()
        status = int(response.status)
        payload: Any = None
        if data:
            try:
                payload = json.loads(data)
            except ValueError:
                payload = {"message": data[:500].decode(errors="replace")}
        if status >= 400:
            payload = payload if isinstance(payload, dict) else {}
            raise KubeApiError(
                status, str(payload.get("reason") or response.reason), str(payload.get("message") or "")
            )
        return payload if isinstance(payload, dict) else {}

    def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", kind.path(namespace, name))
        except KubeApiError as exc:
            if exc.not_found:
                return None
            raise

    def list(
        self, kind: Kind, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list(self.request("GET", kind.path(namespace), query=query).get("items") or [])

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        kind = kind_of(manifest)
        self.writes += 1
        return self.request("POST", kind.path(manifest["metadata"].get("namespace")), body=dict(manifest))

    def patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        self.writes += 1
        return self.request(
            "PATCH",
            kind.path(namespace, name, subresource),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )

    def apply(
        self, manifest: Mapping[str, Any], *, field_manager: str, force: bool = False
    ) -> dict[str, Any]:
        """Server-side apply: ``manifest`` is the whole intent of ``field_manager`` for the object.

        The API server creates the object when missing, sets every field given, and removes
        the fields this manager applied before and gives no longer (unless another manager
        holds them too). ``force`` takes fields another manager changed back instead of
        answering 409. JSON is YAML, so the body goes as JSON under the apply content type.
        """
        kind = kind_of(manifest)
        self.writes += 1
        return self.request(
            "PATCH",
            kind.path(manifest["metadata"].get("namespace"), manifest["metadata"]["name"]),
            body=dict(manifest),
            content_type="application/apply-patch+yaml",
            query={"fieldManager": field_manager, "force": "true" if force else "false"},
        )

    def json_patch(
        self, kind: Kind, namespace: str | None, name: str, operations: list[Mapping[str, Any]]
    ) -> dict[str, Any]:
        self.writes += 1
        return self.request(
            "PATCH",
            kind.path(namespace, name),
            body=[dict(operation) for operation in operations],
            content_type="application/json-patch+json",
        )

    def delete(self, kind: Kind, namespace: str | None, name: str) -> bool:
        self.writes += 1
        try:
            self.request("DELETE", kind.path(namespace, name), body={"propagationPolicy": "Background"})
        except KubeApiError as exc:
            if exc.not_found:
                return False
            raise
        return True
