"""Names shared by the CRD, the builders and the handlers."""

from __future__ import annotations

from typing import Final, Literal

GROUP: Final = "facepipe.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "facepipelines"
KIND: Final = "FacePipeline"
API_VERSION: Final = f"{GROUP}/{VERSION}"
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

OPERATOR_NAME: Final = "facepipe-operator"
FINALIZER: Final = f"{GROUP}/purge"

# Labels (docs/design.md: pods carry the component and the tenant).
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_TENANT: Final = f"{GROUP}/tenant"
LABEL_ROLE: Final = f"{GROUP}/role"  # "worker" on detector/embedder/indexer pods (metrics Service)

ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
# On the CRD: facepipe.operator.crd_check.schema_hash of its schema; the operator expects CRD_SCHEMA_HASH.
ANNOTATION_SCHEMA_HASH: Final = f"{GROUP}/schema-hash"
CRD_SCHEMA_HASH: Final = "1491927315816e62"
ANNOTATION_RESTARTED_AT: Final = "kubectl.kubernetes.io/restartedAt"

Component = Literal["detector", "embedder", "indexer", "ops-api"]
WORKERS: Final[tuple[Component, ...]] = ("detector", "embedder", "indexer")
COMPONENTS: Final[tuple[Component, ...]] = (*WORKERS, "ops-api")
# spec.components.<key> for each component.
SPEC_KEYS: Final[dict[Component, str]] = {
    "detector": "detector",
    "embedder": "embedder",
    "indexer": "indexer",
    "ops-api": "opsApi",
}
# The Python module each component runs (`python -m ...`).
MODULES: Final[dict[Component, str]] = {
    "detector": "facepipe.detector",
    "embedder": "facepipe.embedder",
    "indexer": "facepipe.indexer",
    "ops-api": "facepipe.ops_api",
}
# Which stream each worker reads; its role names the stream in the backlog metric.
StreamRole = Literal["ingest", "detected", "embedded"]
INPUT_ROLE: Final[dict[Component, StreamRole]] = {
    "detector": "ingest",
    "embedder": "detected",
    "indexer": "embedded",
}

METRICS_PORT: Final = 9100
BACKLOG_METRIC: Final = "facepipe_stream_backlog"
