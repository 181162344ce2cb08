"""ONNX Runtime execution providers and session options from settings."""

from __future__ import annotations

import logging

import onnxruntime as ort

log = logging.getLogger("facepipe.models")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def select_providers(device: str, available: list[str] | None = None) -> list[str]:
    """Providers in preference order for INFERENCE_DEVICE (auto | cpu | cuda).

    ``cuda`` asked for but not offered by this onnxruntime build falls back to
    CPU with one clear warning line: a pod scheduled without a GPU still works.
    """
    offered = ort.get_available_providers() if available is None else available
    if device == "cpu":
        return [CPU]
    if CUDA in offered:
        return [CUDA, CPU]
    if device == "cuda":
        log.warning(
            "INFERENCE_DEVICE=cuda but onnxruntime %s offers no %s (available: %s); "
            "falling back to CPU", ort.__version__, CUDA, ", ".join(offered)
        )
    return [CPU]


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """ORT_INTRA_OP_THREADS > 0 pins the thread pool; 0 keeps ORT's default (one per core)."""
    options = ort.SessionOptions()
    # Errors only: w600k_mbf declares a batch-1 output shape, and ORT would log a
    # warning on every batch larger than one although the result is right.
    options.log_severity_level = 3
    # Spinning worker threads burn the CPU the other pipeline stages need on small machines
    # (measured by `make bench`: 8.6 -> 17.4 images/s end to end on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
        # Inter-op parallelism only matters for parallel graphs; these are sequential.
        options.inter_op_num_threads = 1
    return options


def active_provider(session: ort.InferenceSession, wanted: list[str]) -> str:
    """The provider the session really runs on; warn when ORT silently dropped CUDA.

    onnxruntime-gpu lists CUDA as available even when the CUDA libraries are
    missing, then builds a CPU-only session: the session's own list is the truth.
    """
    actual = session.get_providers()[0]
    if actual != wanted[0]:
        log.warning("asked for %s but the session runs on %s (CUDA libraries missing?); using CPU",
                    wanted[0], actual)
    return actual
