#!/usr/bin/env bash
# The benchmark on an NVIDIA GPU: `bench/gpu.sh [extra python -m bench options]`.
#
# 1. builds a venv of its own (GPU_VENV, default .venv-gpu) from the lock file, then swaps
#    onnxruntime for onnxruntime-gpu: never both in one environment (they own the same module);
#    the project's .venv is left alone;
# 2. takes buffalo_l when MODELS_DIR/buffalo_l has det_10g.onnx and w600k_r50.onnx, else buffalo_sc
#    (fetched by `make models`);
# 3. runs the same harness with INFERENCE_DEVICE=cuda: per-stage images/s and faces/s at batch
#    1/32/64, the embedder's batch speedup, and the end-to-end pipeline against the bare models.
#    Results go to bench/results/gpu/latest.{json,md}.
#
# Offline machines: put the wheels (onnxruntime-gpu and the nvidia-* CUDA/cuDNN wheels it pulls
# in) into a folder and set ORT_GPU_WHEELHOUSE=/path/to/wheels.
# Knobs: GPU_VENV, ORT_GPU_SPEC (default "onnxruntime-gpu[cuda,cudnn]"), BENCH_PACK, BENCH_IMAGES,
# BENCH_REPLICAS (default "detector=4,embedder=2": services started per stage).
set -euo pipefail
cd "$(dirname "$0")/.."

GPU_VENV=${GPU_VENV:-.venv-gpu}
ORT_GPU_SPEC=${ORT_GPU_SPEC:-onnxruntime-gpu[cuda,cudnn]}
BENCH_IMAGES=${BENCH_IMAGES:-1000}
BENCH_REPLICAS=${BENCH_REPLICAS:-detector=4,embedder=2}
UV=${UV:-$(command -v uv || echo .venv-tools/bin/uv)}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi -L fails); use 'make bench' for the CPU figures" >&2
    exit 2
fi
nvidia-smi -L

if [ ! -x "$UV" ]; then
    python3 -m venv .venv-tools && .venv-tools/bin/pip install -q uv
    UV=.venv-tools/bin/uv
fi
UV_PROJECT_ENVIRONMENT="$GPU_VENV" "$UV" sync --frozen
PY="$GPU_VENV/bin/python"
"$UV" pip uninstall --python "$PY" onnxruntime
if [ -n "${ORT_GPU_WHEELHOUSE:-}" ]; then
    "$UV" pip install --python "$PY" --no-index --find-links "$ORT_GPU_WHEELHOUSE" "$ORT_GPU_SPEC"
else
    "$UV" pip install --python "$PY" "$ORT_GPU_SPEC"
fi

# The CUDA/cuDNN libraries of the nvidia-* wheels, for this process and the services it starts.
NV_LIBS=$("$PY" - <<'PYEOF'
import glob, os, site
dirs = {os.path.dirname(p) for sp in site.getsitepackages()
        for p in glob.glob(os.path.join(sp, "nvidia", "**", "*.so*"), recursive=True)}
print(":".join(sorted(dirs)))
PYEOF
)
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

"$PY" scripts/fetch_models.py --pack buffalo_sc
MODELS_DIR=${MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/facepipe/models}
if [ -f "$MODELS_DIR/buffalo_l/det_10g.onnx" ] && [ -f "$MODELS_DIR/buffalo_l/w600k_r50.onnx" ]; then
    PACK=${BENCH_PACK:-buffalo_l}
else
    PACK=${BENCH_PACK:-buffalo_sc}
    echo "bench/gpu.sh: buffalo_l not in $MODELS_DIR (see docs/models.md); using $PACK" >&2
fi

# Fail early and clearly when onnxruntime-gpu cannot really run on this GPU.
"$PY" - "$MODELS_DIR/$PACK" <<'PYEOF'
import glob, sys
import onnxruntime as ort
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
model = sorted(glob.glob(sys.argv[1] + "/*.onnx"))[0]
session = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print(f"onnxruntime {ort.__version__}: {model.split('/')[-1]} runs on {session.get_providers()[0]}")
if session.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit("bench/gpu.sh: onnxruntime-gpu fell back to CPU (CUDA/cuDNN libraries missing?)")
PYEOF

exec "$PY" -m bench --device cuda --pack "$PACK" --images "$BENCH_IMAGES" \
    --replicas "$BENCH_REPLICAS" --out bench/results/gpu "$@"
