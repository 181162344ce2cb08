"""A/B measurements of optimisations the figures point to, each in one process, interleaved.

These change code owned by other modules; the harness measures the candidate next to the
current code so the change can be judged (docs/performance.md lists them):

* ``decode``: ``imaging.decode_image`` today (Pillow decode, EXIF transpose copy, RGB convert
  copy, array copy, channel-flip copy) against Pillow decode + one ``cv2.cvtColor`` (the same
  pixels, same error handling) and against ``cv2.imdecode`` (fastest; it does not refuse
  truncated JPEGs, so it cannot replace Pillow's strict decode as is);
* ``detector_input``: SCRFD on the 640x640 letterbox (what insightface does) against an input
  of the image's own aspect ratio, longer side 640, padded to a multiple of 32;
* ``ort_spinning``: the detector's session with ORT's default spin-waiting intra-op threads
  against ``session.intra_op.allow_spinning=0``, at the thread budget.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from bench.common import median, rounded
from bench.images import BenchImage
from facepipe.vision.imaging import ImageLimits, decode_image
from facepipe.vision.models import FaceDetector


def _interleaved(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each variant returns ms per item; variants alternate so the machine's noise hits all alike."""
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            runs[name].append(variant())
    return runs


def _summary(runs: dict[str, list[float]], baseline: str) -> dict[str, object]:
    medians = {name: median(values) for name, values in runs.items()}
    return {
        "ms_per_item": {name: rounded(value, 2) for name, value in medians.items()},
        "speedup_vs_" + baseline: {
            name: rounded(medians[baseline] / value, 2) for name, value in medians.items()
        },
    }


def pil_decode_one_copy(data: bytes) -> np.ndarray:
    """Pillow's strict decode, then a single RGB→BGR conversion (no intermediate copies)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.getexif().get(0x0112, 1) != 1:
            image = ImageOps.exif_transpose(image)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)


def decode_figure(images: Sequence[BenchImage], limits: ImageLimits, repeats: int) -> dict[str, object]:
    def timed(fn: Callable[[bytes], np.ndarray]) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            for image in images:
                fn(image.data)
            return (time.perf_counter() - started) * 1000 / len(images)

        return run

    same = all(np.array_equal(decode_image(i.data, limits), pil_decode_one_copy(i.data)) for i in images)
    runs = _interleaved(
        {
            "decode_image": timed(lambda data: decode_image(data, limits)),
            "pillow_one_copy": timed(pil_decode_one_copy),
            "cv2_imdecode": timed(lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)),
        },
        repeats,
    )
    return {**_summary(runs, "decode_image"), "pillow_one_copy_identical_pixels": same, "images": len(images)}


def aspect_input_size(img: np.ndarray, det_size: int) -> tuple[int, int]:
    """(width, height): the longer side det_size, the other scaled and padded to a multiple of 32."""
    height, width = img.shape[:2]
    scale = det_size / max(height, width)
    return (max(32, -(-round(width * scale) // 32) * 32), max(32, -(-round(height * scale) // 32) * 32))


def detector_input_figure(
    detector: FaceDetector, pixels: Sequence[np.ndarray], repeats: int
) -> dict[str, object]:
    model = getattr(detector, "_model", None)
    if model is None or not hasattr(model, "_feat_stride_fpn"):
        return {"skipped": f"{type(detector).__name__} is not SCRFD"}
    square = [model.detect(img) for img in pixels]
    aspect = [model.detect(img, input_size=aspect_input_size(img, detector.det_size)) for img in pixels]
    same_count = sum(len(a[0]) == len(b[0]) for a, b in zip(square, aspect, strict=True))
    box_diff = max(
        (
            float(np.abs(a[0][:, :4] - b[0][:, :4]).max())
            for a, b in zip(square, aspect, strict=True)
            if len(a[0]) and len(a[0]) == len(b[0])
        ),
        default=0.0,
    )

    def timed(aspect_ratio: bool) -> Callable[[], float]:
        def run() -> float:
            started = time.perf_counter()
            for img in pixels:
                if aspect_ratio:
                    model.detect(img, input_size=aspect_input_size(img, detector.det_size))
                else:
                    model.detect(img)
            return (time.perf_counter() - started) * 1000 / len(pixels)

        return run

    runs = _interleaved({"square_640": timed(False), "aspect_640": timed(True)}, repeats)
    area = (
        float(np.mean([np.prod(aspect_input_size(img, detector.det_size)) for img in pixels]))
        / detector.det_size**2
    )
    return {
        **_summary(runs, "square_640"),
        "images_with_same_face_count": f"{same_count}/{len(pixels)}",
        "max_box_difference_px": rounded(box_diff, 2),
        "mean_input_area_vs_square": rounded(area),
    }


def spinning_figure(
    detector: FaceDetector, pixels: Sequence[np.ndarray], threads: int, repeats: int
) -> dict[str, object]:
    if threads < 2:
        return {"skipped": "one thread: ORT has no pool threads to spin"}
    size = detector.det_size
    blobs = []
    for img in pixels:
        canvas = np.zeros((size, size, 3), np.uint8)
        scale = size / max(img.shape[:2])
        small = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)))
        canvas[: small.shape[0], : small.shape[1]] = small
        blobs.append(cv2.dnn.blobFromImage(canvas, 1 / 128, (size, size), (127.5,) * 3, swapRB=True))

    def session(spinning: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(detector.path), options, providers=["CPUExecutionProvider"])

    sessions = {"spinning_default": session(True), "no_spinning": session(False)}
    input_name = sessions["no_spinning"].get_inputs()[0].name
    cpu_runs: dict[str, list[float]] = {label: [] for label in sessions}

    def timed(label: str) -> Callable[[], float]:
        def run() -> float:
            started, cpu_started = time.perf_counter(), time.process_time()
            for blob in blobs:
                sessions[label].run(None, {input_name: blob})
            cpu_runs[label].append((time.process_time() - cpu_started) * 1000 / len(blobs))
            return (time.perf_counter() - started) * 1000 / len(blobs)

        return run

    runs = _interleaved({label: timed(label) for label in sessions}, repeats)
    return {
        **_summary(runs, "spinning_default"),
        "ort_threads": threads,
        "cpu_ms_per_item": {label: rounded(median(values), 2) for label, values in cpu_runs.items()},
    }
