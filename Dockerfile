# syntax=docker/dockerfile:1.7
# One recipe, one image per component. Build from the repository root (the uv workspace):
#   docker build --build-arg PACKAGE=facepipe-detector --build-arg MODULE=facepipe.detector \
#                -t ghcr.io/face-pipeline/detector:0.1.0 .
#   ... --build-arg ONNXRUNTIME=gpu -t ghcr.io/face-pipeline/detector:0.1.0-gpu .   (model images)
# skaffold.yaml builds all five (detector, embedder, indexer, ops-api, operator) this way.
# An image holds its workspace member and that member's declared dependencies, nothing else:
# a module a member imports without declaring it fails in that image (and in the cluster
# simulation, which builds each image's environment from the `uv sync` line below).
# Models are not baked in: MODELS_DIR (/models) is a volume the pods fill at start.
ARG PYTHON_VERSION=3.11
# The base of both stages: a Debian bookworm with Python at one fixed path. Users' default is the
# official image; where no registry is reachable, a base made locally (debootstrap, with uv in
# it) serves: the test cluster builds `localhost/facepipe/python-base:3.11-bookworm` (docs/test-cluster.md).
ARG BASE=python:${PYTHON_VERSION}-slim-bookworm

FROM ${BASE} AS build
ARG UV_VERSION=0.13.9
# The workspace member to install (facepipe-detector, facepipe-embedder, facepipe-indexer,
# facepipe-ops-api or facepipe-operator).
ARG PACKAGE
# cpu: onnxruntime from uv.lock. gpu: onnxruntime-gpu with its CUDA and cuDNN libraries from
# PyPI (the node brings only the driver); only for images that run models. Never both: they
# own the same module.
ARG ONNXRUNTIME=cpu
ARG ONNXRUNTIME_GPU="onnxruntime-gpu[cuda,cudnn]==1.31.1"
RUN test -n "$PACKAGE" || { echo "--build-arg PACKAGE=facepipe-<component> is required" >&2; exit 1; }
# A base that ships uv (the local one) keeps it; the official image gets it from PyPI.
RUN command -v uv >/dev/null 2>&1 || python3 -m pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /src
# The whole workspace's metadata, so uv can read the lock; no sources yet.
COPY pyproject.toml uv.lock ./
COPY libs/core/pyproject.toml libs/core/
COPY libs/vision/pyproject.toml libs/vision/
COPY libs/store/pyproject.toml libs/store/
COPY services/detector/pyproject.toml services/detector/
COPY services/embedder/pyproject.toml services/embedder/
COPY services/indexer/pyproject.toml services/indexer/
COPY services/ops-api/pyproject.toml services/ops-api/
COPY services/cli/pyproject.toml services/cli/
COPY operator/pyproject.toml operator/
COPY sim/pyproject.toml sim/
COPY cluster/pyproject.toml cluster/
# Third-party dependencies of this member only (no dev tools): this layer outlives source edits.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package "$PACKAGE"
COPY libs/core/src libs/core/src
COPY libs/vision/src libs/vision/src
COPY libs/store/src libs/store/src
COPY services/detector/src services/detector/src
COPY services/embedder/src services/embedder/src
COPY services/indexer/src services/indexer/src
COPY services/ops-api/src services/ops-api/src
COPY operator/src operator/src
# The member and its workspace dependencies, installed as wheels: the runtime image needs no sources.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package "$PACKAGE"
RUN --mount=type=cache,target=/root/.cache/uv \
    case "$ONNXRUNTIME" in \
      cpu) ;; \
      gpu) uv pip show --python /app/.venv/bin/python onnxruntime >/dev/null \
             || { echo "ONNXRUNTIME=gpu: $PACKAGE runs no models" >&2; exit 1; } \
           && uv pip uninstall --python /app/.venv/bin/python onnxruntime \
           && uv pip install --python /app/.venv/bin/python "$ONNXRUNTIME_GPU" ;; \
      *) echo "ONNXRUNTIME must be cpu or gpu, not $ONNXRUNTIME" >&2; exit 1 ;; \
    esac

FROM ${BASE}
# The module `python -m` runs (facepipe.detector, ..., facepipe.operator).
ARG MODULE
RUN test -n "$MODULE" || { echo "--build-arg MODULE=facepipe.<component> is required" >&2; exit 1; }
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app
COPY --from=build /app/.venv /app/.venv
# The CUDA/cuDNN libraries of the gpu variant live in the venv (nvidia-* wheels): register
# their folders with the dynamic loader. A no-op for the cpu variant and the other images.
RUN find /app/.venv -path '*/site-packages/nvidia/*' -name 'lib*.so*' -printf '%h\n' | sort -u \
      > /etc/ld.so.conf.d/facepipe-nvidia.conf \
    && ldconfig
# Defaults each component reads (the operator and the charts set them explicitly too).
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    MODELS_DIR=/models \
    METRICS_PORT=9100 \
    OPS_API_HOST=0.0.0.0 \
    OPS_API_PORT=8001 \
    FACEPIPE_MODULE=${MODULE}
WORKDIR /home/app
# Workers: /metrics on 9100; ops-api: 8001; operator: Kopf's liveness on 8080.
EXPOSE 9100 8001 8080
# Numeric, so the kubelet can enforce runAsNonRoot.
USER 10001:10001
ENTRYPOINT ["/bin/sh", "-c", "exec python -m \"$FACEPIPE_MODULE\" \"$@\"", "facepipe"]
